//! The routing index: every channel, parsed (settings, matchers), kept in
//! memory so that ingest and the dispatcher read no channel rows.
//!
//! The store logs each change to a channel (`channel_log`, in commit order).
//! [`Routes::follow`] applies the changes logged after the last one applied,
//! every [`REFRESH`]: a channel saved anywhere (this process's API, another
//! replica, the CLI, the Consul import) routes everywhere within that. A
//! process that saves a channel itself applies the change at once
//! ([`Routes::refresh`]), so its own API reads what it wrote.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::domain::Channel;
use crate::store::{ChannelChange, Store, StoreError};

/// How often the channel log is read for changes made elsewhere.
pub const REFRESH: Duration = Duration::from_millis(500);

/// A user's channels, by channel id.
type UserChannels = Vec<Arc<Channel>>;

pub struct Routes {
    store: Arc<Store>,
    /// user id → that user's channels (enabled or not), sorted by channel id.
    by_user: RwLock<HashMap<String, UserChannels>>,
    /// The last channel log version applied; held while changes are applied,
    /// so two refreshes never interleave.
    applied: Mutex<i64>,
}

/// One channel looked up by its receiver name.
pub enum Lookup {
    Found(Arc<Channel>),
    /// No such channel (or a stored one that no longer parses).
    Missing,
}

impl Routes {
    /// Loads every channel.
    pub async fn load(store: Arc<Store>) -> Result<Arc<Self>, StoreError> {
        let routes = Arc::new(Self {
            store,
            by_user: RwLock::new(HashMap::new()),
            applied: Mutex::new(0),
        });
        routes.reload(&mut *routes.applied.lock().await).await?;
        Ok(routes)
    }

    async fn reload(&self, applied: &mut i64) -> Result<(), StoreError> {
        let (version, list) = self.store.channel_snapshot().await?;
        for bad in &list.corrupt {
            tracing::error!(user_id = %bad.user_id, channel_id = %bad.channel_id, reason = %bad.reason,
                "a stored channel is corrupt; alerts for it are undeliverable");
        }
        let mut by_user: HashMap<String, UserChannels> = HashMap::new();
        for ch in list.channels {
            by_user
                .entry(ch.user_id.to_string())
                .or_default()
                .push(Arc::new(ch));
        }
        *self.write() = by_user;
        *applied = version;
        tracing::debug!(version, "routing index loaded");
        Ok(())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, UserChannels>> {
        self.by_user.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, UserChannels>> {
        self.by_user.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies the changes logged since the last refresh (or reloads
    /// everything, when the log no longer reaches back that far).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let mut applied = self.applied.lock().await;
        match self.store.channel_changes(*applied).await? {
            Some(changes) => {
                if let Some(last) = changes.last() {
                    let last = last.version;
                    self.apply(changes);
                    *applied = last;
                }
                Ok(())
            }
            None => self.reload(&mut applied).await,
        }
    }

    fn apply(&self, changes: Vec<ChannelChange>) {
        let mut by_user = self.write();
        for change in changes {
            let list = by_user.entry(change.user_id.clone()).or_default();
            let at = list.binary_search_by(|c| c.channel_id.as_str().cmp(&change.channel_id));
            match (at, change.channel) {
                (Ok(i), Some(ch)) => list[i] = Arc::new(ch),
                (Err(i), Some(ch)) => list.insert(i, Arc::new(ch)),
                (Ok(i), None) => {
                    list.remove(i);
                }
                (Err(_), None) => {}
            }
            if list.is_empty() {
                by_user.remove(&change.user_id);
            }
        }
    }

    /// Follows the channel log until `shutdown`.
    pub async fn follow(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(REFRESH) => {}
            }
            match self.refresh().await {
                Ok(()) if failing => {
                    tracing::info!("routing index follows the channel log again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::error!(error = ?anyhow::Error::from(e),
                        "reading the channel log failed; routing with the channels as last read");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }

    /// One channel, by user and channel id.
    pub fn channel(&self, user_id: &str, channel_id: &str) -> Lookup {
        self.read()
            .get(user_id)
            .and_then(|list| {
                list.binary_search_by(|c| c.channel_id.as_str().cmp(channel_id))
                    .ok()
                    .map(|i| list[i].clone())
            })
            .map_or(Lookup::Missing, Lookup::Found)
    }

    /// A user's channels (enabled or not), by channel id.
    pub fn user_channels(&self, user_id: &str) -> UserChannels {
        self.read().get(user_id).cloned().unwrap_or_default()
    }

    /// How many channels the index holds.
    pub fn len(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

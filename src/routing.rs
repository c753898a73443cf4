//! The routing index: every channel, in the compact form routing and sending
//! need, kept in memory so that ingest and the dispatcher read no channel rows.
//!
//! The store logs each change to a channel (`channel_log`, in commit order).
//! [`Routes::follow`] applies the changes logged after the last one applied,
//! every [`REFRESH`]: a channel saved anywhere (this process's API, another
//! replica, the CLI, the Consul import) routes everywhere within that. A
//! process that saves a channel itself applies the change at once
//! ([`Routes::refresh`]), so its own API reads what it wrote.
//!
//! Memory: an index of 300,000 channels is part of every replica's resident
//! set, so it is packed to about 80 bytes a channel, not held as parsed
//! [`Channel`]s (about 900): a user's channels' settings, in their stored
//! JSON form, and their id share one string (settings are parsed when a
//! message is sent: a microsecond or two, next to the send itself), the
//! routes one slice of 24 bytes each, and channel ids and matcher lists that
//! many channels repeat are held once.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hashbrown::HashTable;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::domain::{Channel, ChannelSettings, IntegrationKind, Matchers, Templates};
use crate::store::{ChannelChange, Store, StoreError};

/// How often the channel log is read for changes made elsewhere.
pub const REFRESH: Duration = Duration::from_millis(500);

/// One channel as routing needs it (its settings: [`Routes::sendable`]).
#[derive(Clone, Debug)]
pub struct Route {
    /// Held once for the many channels with the same id (a thin pointer).
    pub channel_id: Arc<String>,
    pub kind: IntegrationKind,
    pub enabled: bool,
    pub send_resolved: bool,
    pub matchers: Arc<Matchers>,
}

/// A route and its settings' JSON (secrets included), before packing; a
/// channel with templates has their JSON object right after (the two are
/// read back with a JSON stream reader, so no channel pays for a second range).
struct Entry {
    route: Route,
    settings: String,
}

impl Entry {
    fn new(ch: &Channel, interned: &mut Interned) -> Self {
        let mut settings = crate::domain::secret::exposing(|| {
            serde_json::to_string(&ch.settings).expect("channel settings serialise")
        });
        if !ch.templates.is_empty() {
            settings.push_str(
                &serde_json::to_string(&ch.templates).expect("channel templates serialise"),
            );
        }
        Entry {
            route: Route {
                channel_id: interned.channel_id(ch.channel_id.as_str()),
                kind: ch.kind(),
                enabled: ch.enabled,
                send_resolved: ch.send_resolved,
                matchers: interned.matchers(&ch.matchers),
            },
            settings,
        }
    }
}

/// A route in a user's slice, its settings the user's text from where the
/// slot before ends (or its start) to `end`; a [`Route`]'s fields laid out
/// flat, so that the slot takes 24 bytes rather than 32.
struct Slot {
    channel_id: Arc<String>,
    matchers: Arc<Matchers>,
    end: u32,
    kind: IntegrationKind,
    enabled: bool,
    send_resolved: bool,
}

impl Slot {
    fn route(&self) -> Route {
        Route {
            channel_id: self.channel_id.clone(),
            kind: self.kind,
            enabled: self.enabled,
            send_resolved: self.send_resolved,
            matchers: self.matchers.clone(),
        }
    }
}

/// One user's channels, sorted by channel id (never none).
struct UserRoutes {
    /// Each channel's settings JSON, back to back, then the user id.
    text: Box<str>,
    slots: Box<[Slot]>,
}

impl UserRoutes {
    fn pack(user_id: &str, entries: Vec<Entry>) -> Self {
        let len = user_id.len() + entries.iter().map(|e| e.settings.len()).sum::<usize>();
        let mut text = String::with_capacity(len);
        let slots = entries
            .into_iter()
            .map(|e| {
                text.push_str(&e.settings);
                let Route {
                    channel_id,
                    kind,
                    enabled,
                    send_resolved,
                    matchers,
                } = e.route;
                Slot {
                    channel_id,
                    matchers,
                    end: u32::try_from(text.len()).expect("a user's channels fit in 4 GiB"),
                    kind,
                    enabled,
                    send_resolved,
                }
            })
            .collect();
        text.push_str(user_id);
        UserRoutes {
            text: text.into_boxed_str(),
            slots,
        }
    }

    fn unpack(self) -> Vec<Entry> {
        (0..self.slots.len())
            .map(|i| Entry {
                settings: self.settings(i).to_owned(),
                route: self.slots[i].route(),
            })
            .collect()
    }

    fn user_id(&self) -> &str {
        let last = self.slots.last().map_or(0, |s| s.end as usize);
        &self.text[last..]
    }

    fn find(&self, channel_id: &str) -> Result<usize, usize> {
        self.slots
            .binary_search_by(|s| s.channel_id.as_str().cmp(channel_id))
    }

    fn settings(&self, i: usize) -> &str {
        let start = i.checked_sub(1).map_or(0, |p| self.slots[p].end as usize);
        &self.text[start..self.slots[i].end as usize]
    }
}

/// What a send needs of a channel besides its route.
#[derive(Debug)]
pub struct Sendable {
    pub settings: ChannelSettings,
    pub templates: Templates,
}

/// A channel's packed settings and templates (see [`Entry`]), parsed.
fn parse_packed(kind: IntegrationKind, packed: &str) -> Result<Sendable, String> {
    let mut values = serde_json::Deserializer::from_str(packed).into_iter::<serde_json::Value>();
    let settings = values
        .next()
        .ok_or("no settings")?
        .map_err(|e| e.to_string())?;
    let templates = values
        .next()
        .transpose()
        .map_err(|e| e.to_string())?
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| e.to_string())?;
    let settings = ChannelSettings::parse(kind, &settings)?;
    Ok(Sendable {
        templates: Templates::parse(&settings, templates)?,
        settings,
    })
}

/// Channel ids and matcher lists seen while loading, each held once.
#[derive(Default)]
struct Interned {
    channel_ids: HashMap<String, Arc<String>>,
    matchers: HashMap<Vec<String>, Arc<Matchers>>,
}

impl Interned {
    fn channel_id(&mut self, id: &str) -> Arc<String> {
        if let Some(a) = self.channel_ids.get(id) {
            return a.clone();
        }
        let a = Arc::new(id.to_owned());
        self.channel_ids.insert(id.to_owned(), a.clone());
        a
    }

    fn matchers(&mut self, m: &Matchers) -> Arc<Matchers> {
        self.matchers
            .entry(m.to_strings())
            .or_insert_with(|| Arc::new(m.clone()))
            .clone()
    }
}

/// Every user's channels, found by user id.
#[derive(Default)]
struct Index {
    users: HashTable<UserRoutes>,
    hasher: RandomState,
}

impl Index {
    fn get(&self, user_id: &str) -> Option<&UserRoutes> {
        self.users
            .find(self.hasher.hash_one(user_id), |u| u.user_id() == user_id)
    }

    fn take(&mut self, user_id: &str) -> Option<UserRoutes> {
        let hash = self.hasher.hash_one(user_id);
        match self.users.find_entry(hash, |u| u.user_id() == user_id) {
            Ok(entry) => Some(entry.remove().0),
            Err(_) => None,
        }
    }

    fn put(&mut self, routes: UserRoutes) {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(routes.user_id());
        self.users
            .insert_unique(hash, routes, |u| hasher.hash_one(u.user_id()));
    }

    fn shrink(&mut self) {
        let hasher = &self.hasher;
        self.users.shrink_to_fit(|u| hasher.hash_one(u.user_id()));
    }
}

pub struct Routes {
    store: Arc<Store>,
    by_user: RwLock<Index>,
    /// The last channel log version applied; held while changes are applied,
    /// so two refreshes never interleave.
    applied: Mutex<i64>,
}

/// One channel looked up by its receiver name.
pub enum Lookup {
    Found(Route),
    /// No such channel (or a stored one that no longer parses).
    Missing,
}

impl Routes {
    /// Loads every channel.
    pub async fn load(store: Arc<Store>) -> Result<Arc<Self>, StoreError> {
        let routes = Arc::new(Self {
            store,
            by_user: RwLock::new(Index::default()),
            applied: Mutex::new(0),
        });
        routes.reload(&mut *routes.applied.lock().await).await?;
        Ok(routes)
    }

    async fn reload(&self, applied: &mut i64) -> Result<(), StoreError> {
        let mut interned = Interned::default();
        let mut index = Index::default();
        let mut user: Option<(String, Vec<Entry>)> = None;
        // Rows come sorted by user, then channel id.
        let (version, corrupt) = self
            .store
            .channel_snapshot(|ch| {
                let entry = Entry::new(&ch, &mut interned);
                match &mut user {
                    Some((id, list)) if id == ch.user_id.as_str() => list.push(entry),
                    _ => {
                        let next = (ch.user_id.to_string(), vec![entry]);
                        if let Some((id, list)) = user.replace(next) {
                            index.put(UserRoutes::pack(&id, list));
                        }
                    }
                }
            })
            .await?;
        if let Some((id, list)) = user {
            index.put(UserRoutes::pack(&id, list));
        }
        for bad in &corrupt {
            tracing::error!(user_id = %bad.user_id, channel_id = %bad.channel_id, reason = %bad.reason,
                "a stored channel is corrupt; alerts for it are undeliverable");
        }
        index.shrink();
        *self.write() = index;
        *applied = version;
        tracing::debug!(version, "routing index loaded");
        Ok(())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.by_user.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
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
        let mut interned = Interned::default();
        let mut index = self.write();
        for change in changes {
            let mut list = index
                .take(&change.user_id)
                .map(UserRoutes::unpack)
                .unwrap_or_default();
            let at = list.binary_search_by(|e| e.route.channel_id.as_str().cmp(&change.channel_id));
            match (at, change.channel) {
                (Ok(i), Some(ch)) => list[i] = Entry::new(&ch, &mut interned),
                (Err(i), Some(ch)) => list.insert(i, Entry::new(&ch, &mut interned)),
                (Ok(i), None) => {
                    list.remove(i);
                }
                (Err(_), None) => {}
            }
            if !list.is_empty() {
                index.put(UserRoutes::pack(&change.user_id, list));
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
                    tracing::error!(error = %crate::error::Causes(&e),
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
            .and_then(|u| u.find(channel_id).ok().map(|i| u.slots[i].route()))
            .map_or(Lookup::Missing, Lookup::Found)
    }

    /// One channel, its settings and its templates, parsed, for a send;
    /// `None` when there is no such channel.
    pub fn sendable(
        &self,
        user_id: &str,
        channel_id: &str,
    ) -> Option<(Route, Result<Sendable, String>)> {
        let index = self.read();
        let u = index.get(user_id)?;
        let i = u.find(channel_id).ok()?;
        let route = u.slots[i].route();
        let parsed = parse_packed(route.kind, u.settings(i));
        Some((route, parsed))
    }

    /// A user's channels (enabled or not), by channel id.
    pub fn user_channels(&self, user_id: &str) -> Vec<Route> {
        self.read()
            .get(user_id)
            .map(|u| u.slots.iter().map(Slot::route).collect())
            .unwrap_or_default()
    }

    /// How many channels the index holds.
    pub fn len(&self) -> usize {
        self.read().users.iter().map(|u| u.slots.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ChannelId, ChannelSpec, UserId};

    fn channel(user: &str, id: &str, url: &str, matchers: &[&str]) -> Channel {
        let spec: ChannelSpec = serde_json::from_value(serde_json::json!({
            "type": "webhook", "settings": {"url": url, "bearer_token": "s3cret"},
            "matchers": matchers,
        }))
        .unwrap();
        Channel::parse(
            UserId::parse(user).unwrap(),
            ChannelId::parse(id).unwrap(),
            spec,
        )
        .unwrap()
    }

    #[test]
    fn a_packed_user_gives_back_each_channel_and_its_settings() {
        let mut interned = Interned::default();
        let channels = [
            channel("u1", "a", "http://one/", &["severity=\"critical\""]),
            channel("u1", "b", "http://two/", &[]),
            channel("u1", "c", "http://three/", &["severity=\"critical\""]),
        ];
        let entries = channels
            .iter()
            .map(|c| Entry::new(c, &mut interned))
            .collect();
        let mut index = Index::default();
        index.put(UserRoutes::pack("u1", entries));
        let u = index.get("u1").expect("u1 is indexed");
        assert_eq!(u.user_id(), "u1");
        for (i, ch) in channels.iter().enumerate() {
            assert_eq!(u.find(ch.channel_id.as_str()), Ok(i));
            let v: serde_json::Value = serde_json::from_str(u.settings(i)).unwrap();
            let parsed = ChannelSettings::parse(IntegrationKind::Webhook, &v).unwrap();
            assert_eq!(parsed, ch.settings, "secrets included");
            assert_eq!(*u.slots[i].matchers, ch.matchers);
        }
        assert!(
            Arc::ptr_eq(&u.slots[0].matchers, &u.slots[2].matchers),
            "a repeated matcher list is held once"
        );
        assert_eq!(u.find("bb"), Err(2));
        assert!(index.get("u2").is_none());
        let back = index.take("u1").unwrap().unpack();
        assert_eq!(back.len(), 3);
        assert_eq!(
            back[1].settings,
            Entry::new(&channels[1], &mut interned).settings
        );
        assert!(index.get("u1").is_none());
    }

    #[test]
    fn a_slot_takes_24_bytes() {
        // 300,000 channels: 7.2 MB of slots, where a Route and a range took 12.
        assert_eq!(std::mem::size_of::<Slot>(), 24);
    }

    #[test]
    fn templates_are_packed_after_the_settings() {
        let mut interned = Interned::default();
        let spec: ChannelSpec = serde_json::from_value(serde_json::json!({
            "type": "slack", "settings": {"api_url": "http://hooks/x"},
            "templates": {"text": "{{ .CommonAnnotations.description }}"},
        }))
        .unwrap();
        let ch = Channel::parse(
            UserId::parse("u1").unwrap(),
            ChannelId::parse("s").unwrap(),
            spec,
        )
        .unwrap();
        let plain = channel("u1", "w", "http://one/", &[]);
        for c in [&ch, &plain] {
            let entry = Entry::new(c, &mut interned);
            let sendable = parse_packed(c.kind(), &entry.settings).unwrap();
            assert_eq!(sendable.settings, c.settings);
            assert_eq!(sendable.templates, c.templates);
        }
        assert!(!ch.templates.is_empty());
    }
}

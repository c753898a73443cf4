//! Import from Consul: the original layout
//! `users/<user_id>/alarms/<type>/<alarm_id>/<field>`, from what
//! `consul kv export users/` writes (a JSON array of `key`, `flags` and a
//! base64 `value`) or live from Consul's `GET /v1/kv/users/?recurse` (the
//! same shape; a 404 there means "no keys"). Channels are upserted, so
//! importing twice changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::channels::SaveError;
use crate::clock::Clock;
use crate::config::{ConsulSettings, Settings};
use crate::dispatch::Registry;
use crate::domain::{Channel, ChannelId, ChannelSource, ChannelSpec, UserId};
use crate::store::Store;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiEntry {
    key: String,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ExportEntry {
    key: String,
    #[serde(default)]
    value: Option<String>,
}

/// One key and its decoded value.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: String,
}

fn decode(key: &str, value: Option<String>) -> Result<Entry, String> {
    use base64::Engine;
    let raw = value.unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .map_err(|e| format!("{key}: value is not base64: {e}"))?;
    let value = String::from_utf8(bytes).map_err(|_| format!("{key}: value is not UTF-8"))?;
    Ok(Entry {
        key: key.to_owned(),
        value: value.trim().to_owned(),
    })
}

/// Reads `consul kv export` output (lower-case keys) or the KV API's (capitalised).
pub fn parse(json: &str) -> Result<(Vec<Entry>, Vec<String>), String> {
    let raw: Vec<Value> =
        serde_json::from_str(json).map_err(|e| format!("not a Consul KV export: {e}"))?;
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for item in raw {
        let decoded = if item.get("key").is_some() {
            serde_json::from_value::<ExportEntry>(item)
                .map_err(|e| e.to_string())
                .and_then(|e| decode(&e.key, e.value))
        } else {
            serde_json::from_value::<ApiEntry>(item)
                .map_err(|e| e.to_string())
                .and_then(|e| decode(&e.key, e.value))
        };
        match decoded {
            Ok(e) => entries.push(e),
            Err(e) => problems.push(e),
        }
    }
    Ok((entries, problems))
}

/// What an import did.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    /// Channels created or changed.
    pub imported: Vec<(String, String)>,
    /// Consul channels deleted (a prune).
    pub deleted: Vec<(String, String)>,
    /// Channels Consul describes as they are stored already.
    pub unchanged: usize,
    pub skipped: Vec<(String, String)>,
    /// Why nothing was changed (the deletion guard), if so.
    pub refused: Option<String>,
    /// Consul channels stored after the sync.
    pub consul_channels: usize,
}

impl Report {
    /// Whether the store changed.
    pub fn changed(&self) -> bool {
        !self.imported.is_empty() || !self.deleted.is_empty()
    }
}

/// The channel body for one alarm of the original layout, or why not.
fn channel_for(kind: &str, fields: &BTreeMap<String, String>) -> Result<ChannelSpec, String> {
    let need = |f: &str| {
        fields
            .get(f)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| format!("missing field {f:?}"))
    };
    let (kind, settings) = match kind {
        "email" => ("email", json!({"to": need("receiver")?})),
        "slack" => {
            let mut s = json!({"api_url": need("api_url")?});
            for f in ["channel", "username"] {
                if let Some(v) = fields.get(f).filter(|v| !v.is_empty()) {
                    s[f] = json!(v);
                }
            }
            ("slack", s)
        }
        "telegram" => ("telegram", json!({"webhook_url": need("tele_webhook")?})),
        "webhook" => ("webhook", json!({"url": need("url")?})),
        "sms" => {
            let number = ["to", "phone", "number", "receiver"]
                .iter()
                .find_map(|f| fields.get(*f).filter(|v| !v.is_empty()))
                .ok_or("missing field \"to\" (no phone number was stored)")?;
            ("sms", json!({"to": number}))
        }
        other => return Err(format!("unknown alarm type {other:?}")),
    };
    Ok(ChannelSpec {
        kind: kind.into(),
        settings,
        templates: None,
        matchers: vec![],
        send_resolved: true,
        enabled: true,
        group_by: None,
        group_wait: None,
        group_interval: None,
        repeat_interval: None,
    })
}

/// The channels Consul describes: each alarm of the layout parsed into a
/// channel (id `<type>-<alarm_id>`, source `consul`), and the keys or alarms
/// that carry none, with why.
struct Described {
    channels: Vec<Channel>,
    /// Alarms present in Consul that do not parse: their channels are kept
    /// as they are (the last good state), not deleted.
    broken: BTreeSet<(String, String)>,
    skipped: Vec<(String, String)>,
}

fn describe(prefix: &str, entries: &[Entry]) -> Described {
    let mut alarms: BTreeMap<(String, String, String), BTreeMap<String, String>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for e in entries {
        let rest = e.key.strip_prefix(prefix).unwrap_or(&e.key);
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        match parts.as_slice() {
            [user, "alarms", kind, alarm, field] if e.key.starts_with(prefix) => {
                alarms
                    .entry((user.to_string(), kind.to_string(), alarm.to_string()))
                    .or_default()
                    .insert(field.to_string(), e.value.clone());
            }
            // Folders and keys outside the layout carry no channel.
            _ if e.value.is_empty() => {}
            _ => skipped.push((
                e.key.clone(),
                format!("not {prefix}<user_id>/alarms/<type>/<alarm_id>/<field>"),
            )),
        }
    }
    let mut channels = Vec::new();
    let mut broken = BTreeSet::new();
    for ((user, kind, alarm), fields) in alarms {
        let name = format!("{prefix}{user}/alarms/{kind}/{alarm}");
        let channel_id = format!("{kind}-{alarm}");
        let parsed = UserId::parse(&user)
            .and_then(|u| ChannelId::parse(&channel_id).map(|c| (u, c)))
            .and_then(|(u, c)| Channel::parse(u, c, channel_for(&kind, &fields)?));
        match parsed {
            Ok(mut channel) => {
                channel.source = ChannelSource::Consul;
                channels.push(channel);
            }
            Err(why) => {
                broken.insert((user, channel_id));
                skipped.push((name, why));
            }
        }
    }
    Described {
        channels,
        broken,
        skipped,
    }
}

/// What a sync does: `--prune` and the watch delete the Consul channels
/// Consul no longer describes; a plain import only creates and changes.
#[derive(Clone, Copy, Debug)]
pub struct SyncOptions {
    pub prune: bool,
    /// Delete however many Consul channels a prune would (the CLI's `--force`).
    pub force: bool,
}

/// Mirrors the channels found in `entries` into the store, through the same
/// checks and path as `PUT`, stamped with `clock`'s time. Channels made
/// through the API are never touched. With `prune`, Consul channels that
/// `entries` no longer describe are deleted, unless that would delete more
/// than `[consul] max_delete_share` of them at once: then nothing at all
/// changes (`Report::refused` says why).
pub async fn sync(
    store: &Store,
    settings: &Settings,
    clock: &Clock,
    entries: &[Entry],
    options: SyncOptions,
) -> anyhow::Result<Report> {
    let described = describe(&settings.consul.prefix, entries);
    let mut report = Report {
        skipped: described.skipped,
        ..Report::default()
    };
    let current = store.channels_of(ChannelSource::Consul).await?;
    let sources = store.channel_sources().await?;
    let mut stored: BTreeMap<(String, String), String> = current
        .channels
        .iter()
        .map(|c| {
            let key = (c.user_id.to_string(), c.channel_id.to_string());
            (key, c.stored_spec())
        })
        .collect();
    for bad in &current.corrupt {
        stored.insert((bad.user_id.clone(), bad.channel_id.clone()), String::new());
    }
    let consul_count = stored.len();
    report.consul_channels = consul_count;
    // What changes, decided before anything is written.
    let mut wanted = BTreeSet::new();
    let mut changes = Vec::new();
    for channel in described.channels {
        let key = (channel.user_id.to_string(), channel.channel_id.to_string());
        wanted.insert(key.clone());
        match (stored.get(&key), sources.get(&key).map(String::as_str)) {
            (Some(spec), _) if *spec == channel.stored_spec() => report.unchanged += 1,
            (None, Some(source)) if source != ChannelSource::Consul.as_str() => {
                report.skipped.push((
                    format!("{}{}/alarms/{}", settings.consul.prefix, key.0, key.1),
                    crate::channels::owned_by(&Channel {
                        source: ChannelSource::Api,
                        ..channel
                    }),
                ));
            }
            _ => changes.push(channel),
        }
    }
    let doomed: Vec<(String, String)> = if options.prune {
        stored
            .keys()
            .filter(|k| !wanted.contains(*k) && !described.broken.contains(*k))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    if !options.force && consul_count > 0 {
        let share = doomed.len() as f64 / consul_count as f64;
        if share > settings.consul.max_delete_share {
            report.refused = Some(format!(
                "this would delete {} of the {consul_count} Consul channels ({:.0} %), more than \
                 consul.max_delete_share ({:.0} %); nothing was changed",
                doomed.len(),
                share * 100.0,
                settings.consul.max_delete_share * 100.0
            ));
            return Ok(report);
        }
    }
    let registry = Registry::standard(settings);
    for channel in changes {
        let name = format!(
            "{}{}/alarms/{}",
            settings.consul.prefix, channel.user_id, channel.channel_id
        );
        match crate::channels::save(store, &registry, settings, clock, channel).await {
            Ok(saved) => {
                report.consul_channels += usize::from(saved.created);
                report.imported.push((
                    saved.channel.user_id.to_string(),
                    saved.channel.channel_id.to_string(),
                ))
            }
            Err(SaveError::Invalid(why) | SaveError::Owned(why)) => {
                report.skipped.push((name, why))
            }
            Err(SaveError::Store(e)) => return Err(e.into()),
        }
    }
    for (user, channel) in doomed {
        if store
            .delete_channel_of(&user, &channel, Some(ChannelSource::Consul))
            .await?
        {
            report.consul_channels -= 1;
            report.deleted.push((user, channel));
        }
    }
    Ok(report)
}

/// How long reading the tree from Consul may take, beyond a blocking query's wait.
const CONSUL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One read of the prefix: its entries (none for Consul's 404, an empty
/// prefix) and the `X-Consul-Index` to block on next.
pub struct Read {
    pub entries: Vec<Entry>,
    pub problems: Vec<String>,
    pub index: Option<u64>,
}

/// Reads the prefix from Consul (`http://host:8500`); with `block`, a
/// blocking query that answers when the prefix changes after that index or
/// `wait` has passed.
pub async fn read(
    consul: &ConsulSettings,
    address: &str,
    block: Option<(u64, std::time::Duration)>,
) -> anyhow::Result<Read> {
    let mut url = url::Url::parse(address.trim_end_matches('/'))
        .map_err(|e| anyhow::anyhow!("consul address {address:?}: {e}"))?;
    url.set_path(&format!("/v1/kv/{}", consul.prefix));
    let mut timeout = CONSUL_TIMEOUT;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("recurse", "true");
        if let Some(dc) = &consul.datacenter {
            q.append_pair("dc", dc);
        }
        if let Some((index, wait)) = block {
            q.append_pair("index", &index.to_string());
            q.append_pair("wait", &format!("{}s", wait.as_secs().max(1)));
            // Consul adds up to wait/16 of jitter to the wait.
            timeout += wait + wait / 16;
        }
    }
    let mut request = crate::outbound::operator_client(timeout).get(url);
    if let Some(token) = consul.token().map_err(anyhow::Error::msg)? {
        request = request.header("X-Consul-Token", token.expose());
    }
    let r = request
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("reading Consul: {}", e.without_url()))?;
    let index = r
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if r.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(Read {
            entries: Vec::new(),
            problems: Vec::new(),
            index,
        });
    }
    if !r.status().is_success() {
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        anyhow::bail!("Consul answered {status}: {}", body.trim());
    }
    let (entries, problems) = parse(&r.text().await?).map_err(anyhow::Error::msg)?;
    Ok(Read {
        entries,
        problems,
        index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes_parse() {
        let export = r#"[{"key":"users/u1/alarms/email/1/receiver","flags":0,"value":"b3BzQGV4YW1wbGUuY29t"}]"#;
        let api = r#"[{"Key":"users/u1/alarms/email/1/receiver","Flags":0,"Value":"b3BzQGV4YW1wbGUuY29t","CreateIndex":1}]"#;
        let expected = vec![Entry {
            key: "users/u1/alarms/email/1/receiver".into(),
            value: "ops@example.com".into(),
        }];
        assert_eq!(parse(export).unwrap().0, expected);
        assert_eq!(parse(api).unwrap().0, expected);
        assert_eq!(parse(r#"[{"key":"k","value":"%%%"}]"#).unwrap().1.len(), 1);
    }
}

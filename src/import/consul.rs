//! Import from Consul: the original layout
//! `users/<user_id>/alarms/<type>/<alarm_id>/<field>`, from what
//! `consul kv export users/` writes (a JSON array of `key`, `flags` and a
//! base64 `value`) or live from Consul's `GET /v1/kv/users/?recurse` (the
//! same shape; a 404 there means "no keys"). Channels are upserted, so
//! importing twice changes nothing.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::channels::SaveError;
use crate::clock::Clock;
use crate::config::Settings;
use crate::dispatch::Registry;
use crate::domain::{Channel, ChannelId, ChannelSpec, UserId};
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
    pub imported: Vec<(String, String)>,
    pub skipped: Vec<(String, String)>,
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
        matchers: vec![],
        send_resolved: true,
        enabled: true,
        group_by: None,
        group_wait: None,
        group_interval: None,
        repeat_interval: None,
    })
}

/// Upserts the channels found in `entries`, through the same checks and path
/// as `PUT`, stamped with `clock`'s time; the channel id is `<type>-<alarm_id>`.
pub async fn import(
    store: &Store,
    settings: &Settings,
    clock: &Clock,
    entries: &[Entry],
) -> anyhow::Result<Report> {
    let mut alarms: BTreeMap<(String, String, String), BTreeMap<String, String>> = BTreeMap::new();
    let mut report = Report::default();
    for e in entries {
        let parts: Vec<&str> = e.key.trim_end_matches('/').split('/').collect();
        match parts.as_slice() {
            ["users", user, "alarms", kind, alarm, field] => {
                alarms
                    .entry((user.to_string(), kind.to_string(), alarm.to_string()))
                    .or_default()
                    .insert(field.to_string(), e.value.clone());
            }
            // Folders and keys outside the layout carry no channel.
            ["users", ..] if e.value.is_empty() => {}
            _ => report.skipped.push((
                e.key.clone(),
                "not users/<user_id>/alarms/<type>/<alarm_id>/<field>".into(),
            )),
        }
    }
    let registry = Registry::standard(settings);
    for ((user, kind, alarm), fields) in alarms {
        let name = format!("users/{user}/alarms/{kind}/{alarm}");
        let parsed = UserId::parse(&user)
            .and_then(|u| ChannelId::parse(&format!("{kind}-{alarm}")).map(|c| (u, c)))
            .and_then(|(u, c)| Channel::parse(u, c, channel_for(&kind, &fields)?));
        let channel = match parsed {
            Ok(channel) => channel,
            Err(why) => {
                report.skipped.push((name, why));
                continue;
            }
        };
        match crate::channels::save(store, &registry, settings, clock, channel).await {
            Ok(saved) => report.imported.push((
                saved.channel.user_id.to_string(),
                saved.channel.channel_id.to_string(),
            )),
            Err(SaveError::Invalid(why)) => report.skipped.push((name, why)),
            Err(SaveError::Store(e)) => return Err(e.into()),
        }
    }
    Ok(report)
}

/// How long reading the `users/` tree from Consul may take.
const CONSUL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads the `users/` tree live from Consul (`http://host:8500`).
pub async fn fetch(address: &str) -> anyhow::Result<(Vec<Entry>, Vec<String>)> {
    let url = format!(
        "{}/v1/kv/users/?recurse=true",
        address.trim_end_matches('/')
    );
    let r = crate::outbound::operator_client(CONSUL_TIMEOUT)
        .get(&url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("reading Consul: {}", e.without_url()))?;
    if r.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok((Vec::new(), Vec::new()));
    }
    if !r.status().is_success() {
        anyhow::bail!("Consul answered {}", r.status());
    }
    parse(&r.text().await?).map_err(anyhow::Error::msg)
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

//! A user's notification channel, as the admin API takes it.

use std::collections::BTreeMap;

use super::matcher::is_label_name;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ChannelId, ChannelSettings, IntegrationKind, Matchers, Templates, UserId};
use crate::clock::Millis;

fn yes() -> bool {
    true
}

/// The channel body of `PUT /v1/users/{user_id}/channels/{channel_id}`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// The integration: email, slack, sms, telegram or webhook.
    #[serde(rename = "type")]
    #[schema(example = "webhook")]
    pub kind: String,
    /// The integration's settings (README, "Channels"); secrets read back as `"<secret>"`.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object, example = json!({"url": "https://hooks.example.com/alerts"}))]
    pub settings: Value,
    /// Message templates by field (see `Templates`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub matchers: Vec<String>,
    #[serde(default = "yes")]
    pub send_resolved: bool,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Optional Alertmanager timing for this channel's route (per-channel rendering).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_wait: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_interval: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// How Alertmanager groups a channel's alerts, when the channel says (rendered
/// into its own route).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RouteTiming {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_by: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_wait: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat_interval: Option<String>,
}

/// Who owns a channel: the admin API, or Consul KV (mirrored by the watch and
/// `import consul-export`; the API does not change such a channel).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelSource {
    #[default]
    Api,
    Consul,
}

impl ChannelSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelSource::Api => "api",
            ChannelSource::Consul => "consul",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "api" => Some(ChannelSource::Api),
            "consul" => Some(ChannelSource::Consul),
            _ => None,
        }
    }
}

/// A channel, parsed: what the store keeps and returns, ready to route,
/// render and send.
#[derive(Clone, Debug, PartialEq)]
pub struct Channel {
    pub user_id: UserId,
    pub channel_id: ChannelId,
    pub settings: ChannelSettings,
    pub templates: Templates,
    pub matchers: Matchers,
    pub send_resolved: bool,
    pub enabled: bool,
    pub timing: RouteTiming,
    pub source: ChannelSource,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl RouteTiming {
    /// Checks the optional timing: Alertmanager durations, label names, and a
    /// `repeat_interval` longer than the dedupe window (a legitimate repeat is
    /// byte-identical, so a shorter one would look like a duplicate).
    pub fn check(&self, dedupe_window: std::time::Duration) -> Result<(), String> {
        for (name, value) in [
            ("group_wait", &self.group_wait),
            ("group_interval", &self.group_interval),
            ("repeat_interval", &self.repeat_interval),
        ] {
            if let Some(v) = value {
                let d = humantime::parse_duration(v)
                    .map_err(|e| format!("{name} {v:?} is not a duration: {e}"))?;
                if name == "repeat_interval" && d <= dedupe_window {
                    return Err(format!(
                        "repeat_interval {v} is not longer than notimeter's dedupe_window ({}): a legitimate \
                         repeat would look like a duplicate; make it longer",
                        humantime::format_duration(dedupe_window)
                    ));
                }
            }
        }
        for label in self.group_by.iter().flatten() {
            if label != "..." && !is_label_name(label) {
                return Err(format!("group_by: {label:?} is not a label name"));
            }
        }
        Ok(())
    }
}

impl Channel {
    /// Parses a channel body: its type, its settings, its templates' fields
    /// (whether they run is checked on save, by `crate::templating`) and its
    /// matchers (in Alertmanager's normal form). Times are the caller's to set.
    pub fn parse(
        user_id: UserId,
        channel_id: ChannelId,
        spec: ChannelSpec,
    ) -> Result<Self, String> {
        let kind: IntegrationKind = spec.kind.parse().map_err(|_| {
            format!(
                "unknown channel type {:?}; known types: {}",
                spec.kind,
                IntegrationKind::known()
            )
        })?;
        let settings = ChannelSettings::parse(kind, &spec.settings)?;
        Ok(Channel {
            user_id,
            channel_id,
            templates: Templates::parse(&settings, spec.templates)?,
            settings,
            matchers: Matchers::parse_all(&spec.matchers)?,
            send_resolved: spec.send_resolved,
            enabled: spec.enabled,
            timing: RouteTiming {
                group_by: spec.group_by,
                group_wait: spec.group_wait,
                group_interval: spec.group_interval,
                repeat_interval: spec.repeat_interval,
            },
            source: ChannelSource::Api,
            created_at: 0,
            updated_at: 0,
        })
    }

    pub fn kind(&self) -> IntegrationKind {
        self.settings.kind()
    }

    /// The channel as a body again. Secrets show as the placeholder, unless
    /// serialised inside [`super::secret::exposing`] (the store).
    pub fn spec(&self) -> ChannelSpec {
        ChannelSpec {
            kind: self.kind().as_str().to_owned(),
            settings: serde_json::to_value(&self.settings).unwrap_or_else(|_| empty_object()),
            templates: self.templates.to_spec(),
            matchers: self.matchers.to_strings(),
            send_resolved: self.send_resolved,
            enabled: self.enabled,
            group_by: self.timing.group_by.clone(),
            group_wait: self.timing.group_wait.clone(),
            group_interval: self.timing.group_interval.clone(),
            repeat_interval: self.timing.repeat_interval.clone(),
        }
    }

    /// The body the store keeps: secrets included.
    pub fn stored_spec(&self) -> String {
        super::secret::exposing(|| {
            serde_json::to_string(&self.spec()).expect("a channel body serialises")
        })
    }
}

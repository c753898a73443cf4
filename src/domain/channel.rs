//! A user's notification channel, as the admin API takes it.

use super::matcher::is_label_name;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ChannelId, Matchers, UserId};

fn yes() -> bool {
    true
}

/// The channel body of `PUT /v1/users/{user_id}/channels/{channel_id}`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "empty_object")]
    pub settings: Value,
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

impl ChannelSpec {
    /// Checks the optional timing: Alertmanager durations, label names, and a
    /// `repeat_interval` longer than the dedupe window (a legitimate repeat is
    /// byte-identical, so a shorter one would look like a duplicate).
    pub fn check_timing(&self, dedupe_window: std::time::Duration) -> Result<(), String> {
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

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// A stored channel, parsed and ready to route and send.
#[derive(Clone, Debug)]
pub struct Channel {
    pub user_id: UserId,
    pub channel_id: ChannelId,
    pub spec: ChannelSpec,
    pub matchers: Matchers,
}

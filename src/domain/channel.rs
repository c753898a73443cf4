//! A user's notification channel, as the admin API takes it.

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

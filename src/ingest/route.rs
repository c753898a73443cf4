//! Attribution: which alerts go to which user's channels.
//!
//! - Receiver `notimeter/<user_id>/<channel_id>` (what the renderer emits, maybe
//!   regex-escaped by Alertmanager): that one channel, with only that user's alerts.
//! - Any other receiver (a catch-all): alerts grouped by their `user_id` label;
//!   each enabled channel of the user whose matchers match gets one message.
//! - Alerts without a valid `user_id` belong to `_unattributed`.
//!
//! Alerts that reach no channel are kept as undeliverable, with a reason.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::alert::{Envelope, InvalidAlert, OutgoingPayload};
use crate::domain::{Alert, AlertStatus, Channel, ChannelId, ChannelSpec, Matchers, UserId};
use crate::store::{ChannelRecord, NewMessage, Store, StoreError, Undeliverable};

/// Where a notification was addressed.
#[derive(Debug, PartialEq)]
pub enum Target {
    Channel(UserId, ChannelId),
    CatchAll,
    /// Looks like a notimeter receiver but its ids are invalid.
    Invalid(String),
}

/// Removes the backslashes Alertmanager may add when it regex-escapes a name.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn parse_receiver(receiver: &str) -> Target {
    let name = unescape(receiver);
    let Some(rest) = name.strip_prefix("notimeter/") else {
        return Target::CatchAll;
    };
    let Some((user, channel)) = rest.split_once('/') else {
        return Target::Invalid(format!(
            "receiver {receiver:?} is not notimeter/<user_id>/<channel_id>"
        ));
    };
    match (UserId::parse(user), ChannelId::parse(channel)) {
        (Ok(u), Ok(c)) => Target::Channel(u, c),
        (Err(e), _) | (_, Err(e)) => Target::Invalid(format!("receiver {receiver:?}: {e}")),
    }
}

/// Reasons recorded for undeliverable alerts.
pub mod reason {
    pub const INVALID_ALERT: &str = "invalid_alert";
    pub const INVALID_RECEIVER: &str = "invalid_receiver";
    pub const USER_MISMATCH: &str = "user_mismatch";
    pub const UNKNOWN_CHANNEL: &str = "unknown_channel";
    pub const CHANNEL_DISABLED: &str = "channel_disabled";
    pub const NO_CHANNEL: &str = "no_channel";
    pub const NO_MATCHING_CHANNEL: &str = "no_matching_channel";
}

/// An alert with the user it is attributed to.
struct Attributed {
    user: UserId,
    raw_user_id: Option<String>,
    alert: Alert,
}

/// What one webhook request turns into.
#[derive(Debug, Default)]
pub struct Plan {
    pub messages: Vec<NewMessage>,
    pub undeliverable: Vec<Undeliverable>,
    /// Received alerts per user they were attributed to (for the counters).
    pub received: BTreeMap<String, u64>,
}

fn attribute(alert: Alert) -> Attributed {
    match alert.user_id_label().map(UserId::parse) {
        Some(Ok(user)) => Attributed {
            user,
            raw_user_id: None,
            alert,
        },
        Some(Err(_)) => Attributed {
            user: UserId::unattributed(),
            raw_user_id: alert.user_id_label().map(str::to_owned),
            alert,
        },
        None => Attributed {
            user: UserId::unattributed(),
            raw_user_id: None,
            alert,
        },
    }
}

pub fn parse_channel(rec: &ChannelRecord) -> Result<Channel, String> {
    let spec: ChannelSpec = serde_json::from_str(&rec.spec).map_err(|e| e.to_string())?;
    let matchers = Matchers::parse_all(&spec.matchers)?;
    Ok(Channel {
        user_id: UserId::parse(&rec.user_id)?,
        channel_id: ChannelId::parse(&rec.channel_id)?,
        spec,
        matchers,
    })
}

impl Plan {
    fn count_received(&mut self, user: &str) {
        match self.received.get_mut(user) {
            Some(n) => *n += 1,
            None => {
                self.received.insert(user.to_owned(), 1);
            }
        }
    }

    fn undeliverable(&mut self, envelope: &Envelope, a: &Attributed, reason: &'static str) {
        self.undeliverable.push(Undeliverable {
            user_id: a.user.to_string(),
            raw_user_id: a.raw_user_id.clone(),
            receiver: envelope.receiver.clone(),
            reason,
            alert: serde_json::to_string(&a.alert).unwrap_or_default(),
        });
    }

    /// One message for `channel` with those of `alerts` it should get (matchers,
    /// `send_resolved`). Returns the indexes of the alerts its matchers took.
    fn offer(
        &mut self,
        envelope: &Envelope,
        channel: &Channel,
        alerts: &[&Attributed],
    ) -> Vec<usize> {
        let matched: Vec<usize> = (0..alerts.len())
            .filter(|&i| channel.matchers.matches(&alerts[i].alert.labels))
            .collect();
        // Like Alertmanager: without send_resolved, resolved alerts are left out,
        // and a notification with nothing firing is not sent.
        let to_send: Vec<&Alert> = matched
            .iter()
            .map(|&i| &alerts[i].alert)
            .filter(|a| channel.spec.send_resolved || a.status == AlertStatus::Firing)
            .collect();
        if !to_send.is_empty() {
            let alertnames: BTreeSet<&str> = to_send.iter().map(|a| a.alertname()).collect();
            let alertnames = alertnames.into_iter().collect::<Vec<_>>().join(",");
            self.messages.push(NewMessage {
                user_id: channel.user_id.to_string(),
                channel_id: channel.channel_id.to_string(),
                integration: channel.spec.kind.clone(),
                group_key: envelope.group_key.clone(),
                alert_count: to_send.len() as i64,
                alertnames,
                payload: OutgoingPayload::new(envelope, &to_send).to_json(),
            });
        }
        matched
    }
}

/// Builds the messages and undeliverable records for one notification.
pub async fn plan(
    store: &Store,
    envelope: &Envelope,
    parsed: Vec<Result<Alert, InvalidAlert>>,
) -> Result<Plan, StoreError> {
    let mut plan = Plan::default();
    let mut alerts = Vec::with_capacity(parsed.len());
    for result in parsed {
        match result {
            Ok(alert) => alerts.push(attribute(alert)),
            Err(invalid) => {
                tracing::warn!(receiver = %envelope.receiver, error = %invalid.error, "undeliverable alert");
                plan.count_received(crate::domain::UNATTRIBUTED);
                plan.undeliverable.push(Undeliverable {
                    user_id: crate::domain::UNATTRIBUTED.to_owned(),
                    raw_user_id: invalid.raw_user_id,
                    receiver: envelope.receiver.clone(),
                    reason: reason::INVALID_ALERT,
                    alert: invalid.raw,
                });
            }
        }
    }
    for a in &alerts {
        plan.count_received(a.user.as_str());
    }

    match parse_receiver(&envelope.receiver) {
        Target::Invalid(why) => {
            tracing::warn!(error = %why, "notification for an invalid notimeter receiver");
            for a in &alerts {
                plan.undeliverable(envelope, a, reason::INVALID_RECEIVER);
            }
        }
        Target::Channel(user, channel_id) => {
            let (own, others): (Vec<&Attributed>, Vec<&Attributed>) =
                alerts.iter().partition(|a| a.user == user);
            for a in others {
                plan.undeliverable(envelope, a, reason::USER_MISMATCH);
            }
            if own.is_empty() {
                return Ok(plan);
            }
            let record = store
                .get_channel(user.as_str(), channel_id.as_str())
                .await?;
            let channel = record.as_ref().map(parse_channel);
            match channel {
                None => own
                    .iter()
                    .for_each(|a| plan.undeliverable(envelope, a, reason::UNKNOWN_CHANNEL)),
                Some(Err(e)) => {
                    tracing::error!(user_id = %user, channel_id = %channel_id, error = %e, "stored channel is corrupt");
                    own.iter()
                        .for_each(|a| plan.undeliverable(envelope, a, reason::UNKNOWN_CHANNEL));
                }
                Some(Ok(ch)) if !ch.spec.enabled => {
                    own.iter()
                        .for_each(|a| plan.undeliverable(envelope, a, reason::CHANNEL_DISABLED));
                }
                Some(Ok(ch)) => {
                    let matched: BTreeSet<usize> =
                        plan.offer(envelope, &ch, &own).into_iter().collect();
                    for (i, a) in own.iter().enumerate() {
                        if !matched.contains(&i) {
                            plan.undeliverable(envelope, a, reason::NO_MATCHING_CHANNEL);
                        }
                    }
                }
            }
        }
        Target::CatchAll => {
            let mut by_user: BTreeMap<&UserId, Vec<&Attributed>> = BTreeMap::new();
            for a in &alerts {
                by_user.entry(&a.user).or_default().push(a);
            }
            for (user, own) in by_user {
                let channels: Vec<Channel> = store
                    .list_channels(user.as_str())
                    .await?
                    .iter()
                    .filter_map(|rec| {
                        parse_channel(rec)
                            .map_err(|e| tracing::error!(user_id = %user, channel_id = %rec.channel_id, error = %e, "stored channel is corrupt"))
                            .ok()
                    })
                    .filter(|c| c.spec.enabled)
                    .collect();
                if channels.is_empty() {
                    own.iter()
                        .for_each(|a| plan.undeliverable(envelope, a, reason::NO_CHANNEL));
                    continue;
                }
                let mut taken = BTreeSet::new();
                for ch in &channels {
                    taken.extend(plan.offer(envelope, ch, &own));
                }
                for (i, a) in own.iter().enumerate() {
                    if !taken.contains(&i) {
                        plan.undeliverable(envelope, a, reason::NO_MATCHING_CHANNEL);
                    }
                }
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receivers() {
        assert_eq!(
            parse_receiver(r"notimeter/team\.a/slack-1"),
            Target::Channel(
                UserId::parse("team.a").unwrap(),
                ChannelId::parse("slack-1").unwrap()
            )
        );
        assert_eq!(parse_receiver("default"), Target::CatchAll);
        assert!(matches!(
            parse_receiver("notimeter/a b/c"),
            Target::Invalid(_)
        ));
        assert!(matches!(
            parse_receiver("notimeter/only-user"),
            Target::Invalid(_)
        ));
    }
}

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
use crate::domain::{Alert, AlertStatus, ReceiverName, Target, UndeliverableReason, UserId};
use crate::routing::{Lookup, Route, Routes};
use crate::store::{NewMessage, Undeliverable};

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
    /// Where each message's payload is written before it is copied out.
    scratch: Vec<u8>,
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

impl Plan {
    fn count_received(&mut self, user: &str) {
        match self.received.get_mut(user) {
            Some(n) => *n += 1,
            None => {
                self.received.insert(user.to_owned(), 1);
            }
        }
    }

    fn undeliverable(&mut self, envelope: &Envelope, a: &Attributed, reason: UndeliverableReason) {
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
        user: &UserId,
        channel: &Route,
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
            .filter(|a| channel.send_resolved || a.status == AlertStatus::Firing)
            .collect();
        if !to_send.is_empty() {
            let alertnames: BTreeSet<&str> = to_send.iter().map(|a| a.alertname()).collect();
            let alertnames = alertnames.into_iter().collect::<Vec<_>>().join(",");
            self.messages.push(NewMessage {
                user_id: user.to_string(),
                channel_id: channel.channel_id.to_string(),
                integration: channel.kind,
                group_key: envelope.group_key.clone(),
                alert_count: to_send.len() as i64,
                alertnames,
                payload: OutgoingPayload::new(envelope, &to_send).to_json_in(&mut self.scratch),
            });
        }
        matched
    }
}

/// Builds the messages and undeliverable records for one notification, from
/// the channels in the routing index.
pub fn plan(
    routes: &Routes,
    envelope: &Envelope,
    parsed: Vec<Result<Alert, InvalidAlert>>,
) -> Plan {
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
                    reason: UndeliverableReason::InvalidAlert,
                    alert: invalid.raw,
                });
            }
        }
    }
    for a in &alerts {
        plan.count_received(a.user.as_str());
    }
    match ReceiverName::target(&envelope.receiver) {
        Target::Invalid(why) => {
            tracing::warn!(error = %why, "notification for an invalid notimeter receiver");
            for a in &alerts {
                plan.undeliverable(envelope, a, UndeliverableReason::InvalidReceiver);
            }
        }
        Target::Channel(receiver) => plan.for_channel(routes, envelope, &receiver, &alerts),
        Target::CatchAll => plan.for_catch_all(routes, envelope, &alerts),
    }
    // Not kept while the messages are stored.
    plan.scratch = Vec::new();
    plan
}

impl Plan {
    /// A channel's own receiver: its user's alerts go to it alone.
    fn for_channel(
        &mut self,
        routes: &Routes,
        envelope: &Envelope,
        receiver: &ReceiverName,
        alerts: &[Attributed],
    ) {
        let (own, others): (Vec<&Attributed>, Vec<&Attributed>) =
            alerts.iter().partition(|a| a.user == receiver.user_id);
        for a in others {
            self.undeliverable(envelope, a, UndeliverableReason::UserMismatch);
        }
        if own.is_empty() {
            return;
        }
        let (user, channel_id) = (&receiver.user_id, &receiver.channel_id);
        let why = match routes.channel(user.as_str(), channel_id.as_str()) {
            Lookup::Found(ch) if ch.enabled => {
                let matched: BTreeSet<usize> =
                    self.offer(envelope, user, &ch, &own).into_iter().collect();
                for (i, a) in own.iter().enumerate() {
                    if !matched.contains(&i) {
                        self.undeliverable(envelope, a, UndeliverableReason::NoMatchingChannel);
                    }
                }
                return;
            }
            Lookup::Found(_) => UndeliverableReason::ChannelDisabled,
            Lookup::Missing => UndeliverableReason::UnknownChannel,
        };
        own.iter()
            .for_each(|a| self.undeliverable(envelope, a, why));
    }

    /// Any other receiver: each user's alerts go to every enabled channel of
    /// theirs whose matchers take them.
    fn for_catch_all(&mut self, routes: &Routes, envelope: &Envelope, alerts: &[Attributed]) {
        let mut by_user: BTreeMap<&UserId, Vec<&Attributed>> = BTreeMap::new();
        for a in alerts {
            by_user.entry(&a.user).or_default().push(a);
        }
        for (user, own) in by_user {
            let mut channels = routes.user_channels(user.as_str());
            channels.retain(|c| c.enabled);
            if channels.is_empty() {
                own.iter()
                    .for_each(|a| self.undeliverable(envelope, a, UndeliverableReason::NoChannel));
                continue;
            }
            let mut taken = BTreeSet::new();
            for ch in &channels {
                taken.extend(self.offer(envelope, user, ch, &own));
            }
            for (i, a) in own.iter().enumerate() {
                if !taken.contains(&i) {
                    self.undeliverable(envelope, a, UndeliverableReason::NoMatchingChannel);
                }
            }
        }
    }
}

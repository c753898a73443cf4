//! Receiver names: the renderer names each channel's receiver
//! `notimeter/<user_id>/<channel_id>`, and ingest reads the name Alertmanager
//! posts back (regex-escaped, sometimes) to find the channel. One type does both.

use std::fmt;

use super::{ChannelId, UserId};

const PREFIX: &str = "notimeter/";

/// The receiver of one channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverName {
    pub user_id: UserId,
    pub channel_id: ChannelId,
}

impl fmt::Display for ReceiverName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}/{}", self.user_id, self.channel_id)
    }
}

/// Where a notification was addressed, by its receiver's name.
#[derive(Debug, PartialEq)]
pub enum Target {
    Channel(ReceiverName),
    /// Any other receiver: alerts go to their users' channels by label.
    CatchAll,
    /// Looks like a notimeter receiver but its ids are invalid.
    Invalid(String),
}

impl ReceiverName {
    pub fn new(user_id: UserId, channel_id: ChannelId) -> Self {
        Self {
            user_id,
            channel_id,
        }
    }

    /// Reads a receiver name as Alertmanager posts it.
    pub fn target(receiver: &str) -> Target {
        let name = unescape(receiver);
        let Some(rest) = name.strip_prefix(PREFIX) else {
            return Target::CatchAll;
        };
        let Some((user, channel)) = rest.split_once('/') else {
            return Target::Invalid(format!(
                "receiver {receiver:?} is not notimeter/<user_id>/<channel_id>"
            ));
        };
        match (UserId::parse(user), ChannelId::parse(channel)) {
            (Ok(u), Ok(c)) => Target::Channel(ReceiverName::new(u, c)),
            (Err(e), _) | (_, Err(e)) => Target::Invalid(format!("receiver {receiver:?}: {e}")),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn name(u: &str, c: &str) -> ReceiverName {
        ReceiverName::new(UserId::parse(u).unwrap(), ChannelId::parse(c).unwrap())
    }

    #[test]
    fn formats_and_reads_back() {
        let n = name("team.a", "slack-1");
        assert_eq!(n.to_string(), "notimeter/team.a/slack-1");
        assert_eq!(
            ReceiverName::target(&n.to_string()),
            Target::Channel(n.clone())
        );
        assert_eq!(
            ReceiverName::target(r"notimeter/team\.a/slack-1"),
            Target::Channel(n)
        );
        assert_eq!(ReceiverName::target("default"), Target::CatchAll);
        assert!(matches!(
            ReceiverName::target("notimeter/a b/c"),
            Target::Invalid(_)
        ));
        assert!(matches!(
            ReceiverName::target("notimeter/only-user"),
            Target::Invalid(_)
        ));
    }
}

//! What becomes of messages, attempts and alerts, by the names the store,
//! the metrics and the exports use.

use std::fmt;
use std::str::FromStr;

macro_rules! named {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!(concat!("not a ", stringify!($name), ": {:?}"), s))
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

named!(
    /// A message's state in the outbox; all but `Pending` are final.
    MessageState {
        Pending => "pending",
        Delivered => "delivered",
        Failed => "failed",
        /// A newer message of its (channel, group) replaced it before it was sent.
        Superseded => "superseded",
    }
);

named!(
    /// Why an attempt failed, in Alertmanager's names.
    Reason {
        ClientError => "clientError",
        ServerError => "serverError",
        RateLimited => "rateLimited",
        AuthError => "authError",
        ContextDeadlineExceeded => "contextDeadlineExceeded",
        Other => "other",
    }
);

named!(
    /// Why an alert reached no channel.
    UndeliverableReason {
        InvalidAlert => "invalid_alert",
        InvalidReceiver => "invalid_receiver",
        UserMismatch => "user_mismatch",
        UnknownChannel => "unknown_channel",
        ChannelDisabled => "channel_disabled",
        NoChannel => "no_channel",
        NoMatchingChannel => "no_matching_channel",
    }
);

/// An attempt's result: `success`, or the reason it failed (the store's
/// `attempts.result`, the metrics' `result` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptResult {
    Success,
    Failed(Reason),
}

impl AttemptResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Success => "success",
            AttemptResult::Failed(reason) => reason.as_str(),
        }
    }

    pub fn reason(self) -> Option<Reason> {
        match self {
            AttemptResult::Success => None,
            AttemptResult::Failed(reason) => Some(reason),
        }
    }
}

impl fmt::Display for AttemptResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AttemptResult {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "success" => Ok(AttemptResult::Success),
            other => other.parse().map(AttemptResult::Failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in MessageState::ALL {
            assert_eq!(s.as_str().parse::<MessageState>().unwrap(), *s);
        }
        for r in UndeliverableReason::ALL {
            assert_eq!(r.as_str().parse::<UndeliverableReason>().unwrap(), *r);
        }
        for r in Reason::ALL {
            let result = AttemptResult::Failed(*r);
            assert_eq!(result.as_str().parse::<AttemptResult>().unwrap(), result);
        }
        assert_eq!(
            "success".parse::<AttemptResult>().unwrap(),
            AttemptResult::Success
        );
        assert!("exploded".parse::<AttemptResult>().is_err());
        assert_eq!(MessageState::Superseded.to_string(), "superseded");
    }
}

//! The integrations notimeter sends through, by the names Alertmanager gives
//! them in its `integration` label.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One integration. Serde reads and writes it in lower case, so a settings key
/// or a channel `type` naming anything else is refused where it is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IntegrationKind {
    Email,
    Slack,
    Sms,
    Telegram,
    Webhook,
}

impl IntegrationKind {
    /// Every integration, in the order of their names.
    pub const ALL: [IntegrationKind; 5] = [
        IntegrationKind::Email,
        IntegrationKind::Slack,
        IntegrationKind::Sms,
        IntegrationKind::Telegram,
        IntegrationKind::Webhook,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IntegrationKind::Email => "email",
            IntegrationKind::Slack => "slack",
            IntegrationKind::Sms => "sms",
            IntegrationKind::Telegram => "telegram",
            IntegrationKind::Webhook => "webhook",
        }
    }

    /// The names of every integration, for error messages: `email, slack, …`.
    pub fn known() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for IntegrationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IntegrationKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown integration {s:?}; known: {}", Self::known()))
    }
}

impl TryFrom<String> for IntegrationKind {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for kind in IntegrationKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
            assert_eq!(
                serde_json::from_str::<IntegrationKind>(&json).unwrap(),
                kind
            );
            assert_eq!(kind.as_str().parse::<IntegrationKind>().unwrap(), kind);
        }
        let err = "smz".parse::<IntegrationKind>().unwrap_err();
        assert!(err.contains("unknown integration \"smz\""), "{err}");
        assert!(serde_json::from_str::<IntegrationKind>("\"Slack\"").is_err());
    }
}

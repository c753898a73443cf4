//! Each integration's channel settings, typed, as Alertmanager keeps its
//! receivers' configs apart from the code that sends (`config/notifiers.go`).
//! Parsing checks everything that needs no operator configuration; what does
//! (the outbound guard, whether SMTP or an SMS gateway is set up) is checked
//! by the integration in `dispatch/` when a channel is saved.

use std::fmt;

use lettre::message::Mailbox;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::{IntegrationKind, Secret};

/// A channel's settings, by integration.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ChannelSettings {
    Email(EmailSettings),
    Slack(SlackSettings),
    Sms(SmsSettings),
    Telegram(TelegramSettings),
    Webhook(WebhookSettings),
}

impl ChannelSettings {
    /// Parses the `settings` object of a channel of type `kind`; errors name
    /// the field (`settings.to: …`).
    pub fn parse(kind: IntegrationKind, settings: &Value) -> Result<Self, String> {
        fn typed<T: DeserializeOwned>(settings: &Value) -> Result<T, String> {
            T::deserialize(settings).map_err(|e| format!("settings: {e}"))
        }
        Ok(match kind {
            IntegrationKind::Email => Self::Email(typed::<EmailSettings>(settings)?.checked()?),
            IntegrationKind::Slack => Self::Slack(typed(settings)?),
            IntegrationKind::Sms => Self::Sms(typed::<SmsSettings>(settings)?.checked()?),
            IntegrationKind::Telegram => {
                Self::Telegram(typed::<TelegramSettings>(settings)?.checked()?)
            }
            IntegrationKind::Webhook => {
                Self::Webhook(typed::<WebhookSettings>(settings)?.checked()?)
            }
        })
    }

    pub fn kind(&self) -> IntegrationKind {
        match self {
            Self::Email(_) => IntegrationKind::Email,
            Self::Slack(_) => IntegrationKind::Slack,
            Self::Sms(_) => IntegrationKind::Sms,
            Self::Telegram(_) => IntegrationKind::Telegram,
            Self::Webhook(_) => IntegrationKind::Webhook,
        }
    }

    /// For a `PUT` that sends secrets back as the placeholder `GET` showed:
    /// keeps the stored values, when the channel keeps its type.
    pub fn keep_secrets(&mut self, previous: &ChannelSettings) {
        fn keep(new: &mut Option<Secret>, old: &Option<Secret>) {
            if let (Some(new), Some(old)) = (new.as_mut(), old) {
                new.keep(old);
            }
        }
        match (self, previous) {
            (Self::Slack(new), Self::Slack(old)) => new.api_url.keep(&old.api_url),
            (Self::Telegram(new), Self::Telegram(old)) => {
                keep(&mut new.bot_token, &old.bot_token);
                keep(&mut new.webhook_url, &old.webhook_url);
            }
            (Self::Webhook(new), Self::Webhook(old)) => {
                new.url.keep(&old.url);
                keep(&mut new.bearer_token, &old.bearer_token);
                if let (Some(new), Some(old)) = (&mut new.basic_auth, &old.basic_auth) {
                    new.password.keep(&old.password);
                }
            }
            _ => {}
        }
    }
}

/// `webhook`: Alertmanager's v4 payload to a URL. The URL is a secret, as in
/// Alertmanager (it often carries a token).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    pub url: Secret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// At most this many alerts per message (0: all); the rest are counted in
    /// `truncatedAlerts`, as Alertmanager does.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_alerts: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    #[serde(default)]
    pub password: Secret,
}

impl WebhookSettings {
    fn checked(self) -> Result<Self, String> {
        if self.bearer_token.is_some() && self.basic_auth.is_some() {
            return Err("settings: bearer_token and basic_auth are mutually exclusive".into());
        }
        Ok(self)
    }
}

/// `slack`: an incoming webhook (a secret URL).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSettings {
    pub api_url: Secret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// `telegram`: the Bot API (`bot_token` and `chat_id`), or a relay
/// (`webhook_url`, the original setup's `tele_webhook`) taking the payload.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_id: Option<ChatId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse_mode: Option<ParseMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_thread_id: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_notifications: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<Secret>,
}

/// Where a Telegram message goes: which Bot API destination, or a relay.
pub enum TelegramTarget<'a> {
    Bot {
        token: &'a Secret,
        chat_id: &'a ChatId,
    },
    Relay(&'a Secret),
}

impl TelegramSettings {
    fn checked(self) -> Result<Self, String> {
        match (&self.webhook_url, &self.bot_token, &self.chat_id) {
            (Some(_), None, None) => {}
            (Some(_), _, _) => {
                return Err(
                    "settings: webhook_url (the relay form) goes without bot_token and chat_id"
                        .into(),
                )
            }
            (None, Some(token), Some(_)) if !token.expose().is_empty() => {}
            _ => {
                return Err(
                    "settings: bot_token and chat_id are required (or webhook_url for a relay)"
                        .into(),
                )
            }
        }
        if let Some(ChatId::Name(name)) = &self.chat_id {
            if !name.starts_with('@') && name.parse::<i64>().is_err() {
                return Err(format!(
                    "settings.chat_id {name:?} is neither a number nor an @channel name"
                ));
            }
        }
        Ok(self)
    }

    pub fn target(&self) -> TelegramTarget<'_> {
        match (&self.webhook_url, &self.bot_token, &self.chat_id) {
            (Some(relay), _, _) => TelegramTarget::Relay(relay),
            (None, Some(token), Some(chat_id)) => TelegramTarget::Bot { token, chat_id },
            _ => unreachable!("checked when parsed: a relay, or a token and a chat"),
        }
    }

    pub fn parse_mode(&self) -> ParseMode {
        self.parse_mode.unwrap_or(ParseMode::Html)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ChatId {
    Id(i64),
    Name(String),
}

impl fmt::Display for ChatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatId::Id(id) => write!(f, "{id}"),
            ChatId::Name(name) => f.write_str(name),
        }
    }
}

/// Telegram's `parse_mode`; `""` sends plain text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseMode {
    Html,
    MarkdownV2,
    Markdown,
    Plain,
}

impl ParseMode {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "HTML" => Ok(ParseMode::Html),
            "MarkdownV2" => Ok(ParseMode::MarkdownV2),
            "Markdown" => Ok(ParseMode::Markdown),
            "" => Ok(ParseMode::Plain),
            other => Err(format!(
                "settings.parse_mode {other:?} is not one of \"HTML\", \"MarkdownV2\", \"Markdown\" or \"\""
            )),
        }
    }

    /// The Bot API's name; None for plain text.
    pub fn api_name(self) -> Option<&'static str> {
        match self {
            ParseMode::Html => Some("HTML"),
            ParseMode::MarkdownV2 => Some("MarkdownV2"),
            ParseMode::Markdown => Some("Markdown"),
            ParseMode::Plain => None,
        }
    }
}

impl<'de> Deserialize<'de> for ParseMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ParseMode::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Serialize for ParseMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.api_name().unwrap_or(""))
    }
}

/// `email`: one address or a list, through the operator's `[smtp]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    pub to: Recipients,
}

/// Email recipients, written as one address or a list (and kept in that form).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Recipients {
    One(Address),
    Many(Vec<Address>),
}

impl Recipients {
    pub fn mailboxes(&self) -> Vec<Mailbox> {
        match self {
            Recipients::One(a) => vec![a.0.clone()],
            Recipients::Many(list) => list.iter().map(|a| a.0.clone()).collect(),
        }
    }
}

/// One email address (`ops@example.com`, `Ops <ops@example.com>`).
#[derive(Clone, Debug, PartialEq)]
pub struct Address(pub Mailbox);

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse::<Mailbox>()
            .map(Address)
            .map_err(|e| serde::de::Error::custom(format!("{raw:?} is not an email address: {e}")))
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl EmailSettings {
    fn checked(self) -> Result<Self, String> {
        if matches!(&self.to, Recipients::Many(list) if list.is_empty()) {
            return Err("settings.to needs at least one address".into());
        }
        Ok(self)
    }
}

/// `sms`: an E.164 number, through the operator's `[sms]` gateway.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmsSettings {
    pub to: String,
}

/// E.164: `+`, a non-zero digit, up to 15 digits in all.
pub fn is_e164(s: &str) -> bool {
    let digits = s.strip_prefix('+').unwrap_or("");
    (2..=15).contains(&digits.len())
        && !digits.starts_with('0')
        && digits.chars().all(|c| c.is_ascii_digit())
}

impl SmsSettings {
    fn checked(self) -> Result<Self, String> {
        if !is_e164(&self.to) {
            return Err(format!(
                "settings.to {:?} is not an E.164 number such as +14155550100",
                self.to
            ));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::secret::exposing;
    use serde_json::json;

    fn parse(kind: IntegrationKind, v: Value) -> Result<ChannelSettings, String> {
        ChannelSettings::parse(kind, &v)
    }

    #[test]
    fn telegram_forms() {
        use IntegrationKind::Telegram;
        assert!(parse(Telegram, json!({"bot_token": "1:x", "chat_id": -100})).is_ok());
        assert!(parse(Telegram, json!({"bot_token": "1:x", "chat_id": "@ops"})).is_ok());
        assert!(parse(Telegram, json!({"webhook_url": "https://relay/x"})).is_ok());
        assert!(parse(Telegram, json!({"bot_token": "1:x"})).is_err());
        assert!(parse(
            Telegram,
            json!({"webhook_url": "https://relay/x", "bot_token": "1:x"})
        )
        .is_err());
        let err = parse(
            Telegram,
            json!({"bot_token": "1:x", "chat_id": 1, "parse_mode": "BBCode"}),
        )
        .unwrap_err();
        assert!(err.contains("parse_mode \"BBCode\""), "{err}");
        assert!(parse(Telegram, json!({"bot_token": "1:x", "chat_id": "ops"})).is_err());
    }

    #[test]
    fn email_recipients() {
        use IntegrationKind::Email;
        assert!(parse(Email, json!({"to": "a@example.com"})).is_ok());
        assert!(parse(
            Email,
            json!({"to": ["a@example.com", "Ops <b@example.com>"]})
        )
        .is_ok());
        assert!(parse(Email, json!({"to": []})).is_err());
        assert!(parse(Email, json!({"to": "not an address"})).is_err());
        assert!(parse(
            Email,
            json!({"to": "a@example.com\r\nBcc: evil@example.com"})
        )
        .is_err());
    }

    #[test]
    fn sms_numbers() {
        assert!(is_e164("+14155550100"));
        assert!(!is_e164("14155550100"));
        assert!(!is_e164("+0123"));
        assert!(!is_e164("+1 415 555"));
        assert!(parse(IntegrationKind::Sms, json!({"to": "+14155550100"})).is_ok());
        assert!(parse(IntegrationKind::Sms, json!({"to": "0800"})).is_err());
    }

    #[test]
    fn secrets_redact_in_views_round_trip_when_stored_and_are_kept() {
        let stored =
            json!({"url": "https://x/secret", "basic_auth": {"username": "u", "password": "p"}});
        let old = parse(IntegrationKind::Webhook, stored.clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&old).unwrap(),
            json!({"url": "<secret>", "basic_auth": {"username": "u", "password": "<secret>"}})
        );
        assert_eq!(exposing(|| serde_json::to_value(&old).unwrap()), stored);
        let mut sent_back = parse(
            IntegrationKind::Webhook,
            json!({"url": "<secret>", "basic_auth": {"username": "v", "password": "<secret>"}}),
        )
        .unwrap();
        sent_back.keep_secrets(&old);
        assert_eq!(
            exposing(|| serde_json::to_value(&sent_back).unwrap()),
            json!({"url": "https://x/secret", "basic_auth": {"username": "v", "password": "p"}})
        );
        assert!(!format!("{old:?}").contains("secret/"));
    }

    #[test]
    fn webhook_auth_is_one_or_the_other() {
        assert!(parse(
            IntegrationKind::Webhook,
            json!({"url": "https://x", "bearer_token": "t", "basic_auth": {"username": "u"}})
        )
        .is_err());
    }
}

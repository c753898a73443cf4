//! A channel's message templates: the source of each field of the message its
//! integration sends that the channel replaces, in Alertmanager's template
//! language. Parsing checks only that the channel's type has those fields;
//! whether a template parses and runs is checked where the engine lives
//! (`crate::templating`), when the channel is saved.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Serialize, Serializer};

use super::{ChannelSettings, IntegrationKind};

/// A field of a message that a template may give.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TemplateField {
    Title,
    Text,
    Pretext,
    Footer,
    Message,
    Subject,
    Html,
}

impl TemplateField {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateField::Title => "title",
            TemplateField::Text => "text",
            TemplateField::Pretext => "pretext",
            TemplateField::Footer => "footer",
            TemplateField::Message => "message",
            TemplateField::Subject => "subject",
            TemplateField::Html => "html",
        }
    }

    /// The fields a channel of type `kind` may template, in the order the
    /// README lists them.
    pub fn of(kind: IntegrationKind) -> &'static [TemplateField] {
        use TemplateField::*;
        match kind {
            IntegrationKind::Slack => &[Title, Text, Pretext, Footer],
            IntegrationKind::Telegram => &[Message],
            IntegrationKind::Email => &[Subject, Html, Text],
            IntegrationKind::Sms => &[Text],
            IntegrationKind::Webhook => &[],
        }
    }
}

impl fmt::Display for TemplateField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A channel's templates by field; only fields its type has. Empty when the
/// channel uses the default texts throughout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Templates(BTreeMap<TemplateField, String>);

impl Templates {
    /// Parses the `templates` object of a channel with `settings`; errors
    /// name the field (`templates.nope: …`). A channel that forwards the
    /// payload (a webhook, a Telegram relay) has none.
    pub fn parse(
        settings: &ChannelSettings,
        raw: Option<BTreeMap<String, String>>,
    ) -> Result<Self, String> {
        let Some(raw) = raw else {
            return Ok(Self::default());
        };
        let kind = settings.kind();
        let relay = matches!(settings, ChannelSettings::Telegram(t) if t.webhook_url.is_some());
        let fields = if relay { &[] } else { TemplateField::of(kind) };
        if fields.is_empty() {
            let what = if relay {
                "telegram relay channels (webhook_url)".to_owned()
            } else {
                format!("{kind} channels")
            };
            return Err(format!(
                "templates: {what} have no templates (the payload is sent as it is)"
            ));
        }
        let mut templates = BTreeMap::new();
        for (name, source) in raw {
            let Some(field) = fields.iter().find(|f| f.as_str() == name) else {
                let known: Vec<&str> = fields.iter().map(|f| f.as_str()).collect();
                return Err(format!(
                    "templates.{name}: {kind} channels have no such template; theirs are {}",
                    known.join(", ")
                ));
            };
            templates.insert(*field, source);
        }
        Ok(Self(templates))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each templated field and its source.
    pub fn iter(&self) -> impl Iterator<Item = (TemplateField, &str)> {
        self.0.iter().map(|(f, s)| (*f, s.as_str()))
    }

    /// The `templates` object again, or `None` when there are none.
    pub fn to_spec(&self) -> Option<BTreeMap<String, String>> {
        (!self.is_empty()).then(|| {
            self.iter()
                .map(|(f, s)| (f.as_str().to_owned(), s.to_owned()))
                .collect()
        })
    }
}

impl Serialize for Templates {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter().map(|(f, src)| (f.as_str(), src)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn fields_by_type() {
        let settings = |kind, v| ChannelSettings::parse(kind, &v).unwrap();
        let slack = settings(
            IntegrationKind::Slack,
            serde_json::json!({"api_url": "http://x"}),
        );
        let t = Templates::parse(&slack, raw(&[("text", "{{ .Status }}")])).unwrap();
        assert_eq!(
            t.iter().collect::<Vec<_>>(),
            [(TemplateField::Text, "{{ .Status }}")]
        );
        assert_eq!(t.to_spec(), raw(&[("text", "{{ .Status }}")]));
        let err = Templates::parse(&slack, raw(&[("message", "x")])).unwrap_err();
        assert_eq!(
            err,
            "templates.message: slack channels have no such template; theirs are title, text, pretext, footer"
        );
        let webhook = settings(
            IntegrationKind::Webhook,
            serde_json::json!({"url": "http://x"}),
        );
        assert!(Templates::parse(&webhook, None).unwrap().is_empty());
        let err = Templates::parse(&webhook, raw(&[])).unwrap_err();
        assert!(
            err.starts_with("templates: webhook channels have no templates"),
            "{err}"
        );
        let relay = settings(
            IntegrationKind::Telegram,
            serde_json::json!({"webhook_url": "http://x"}),
        );
        let err = Templates::parse(&relay, raw(&[("message", "x")])).unwrap_err();
        assert!(
            err.starts_with("templates: telegram relay channels (webhook_url) have no templates"),
            "{err}"
        );
        let bot = settings(
            IntegrationKind::Telegram,
            serde_json::json!({"bot_token": "1:x", "chat_id": 1}),
        );
        assert!(Templates::parse(&bot, raw(&[("message", "x")])).is_ok());
    }
}

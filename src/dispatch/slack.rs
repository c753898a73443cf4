//! Slack incoming webhooks, with what Alertmanager's default Slack template
//! gives: title `[FIRING:N] …`, a link to Alertmanager, colour by status, and
//! the alerts' descriptions as text. A channel's templates may give the
//! title (cut to Alertmanager's 1,024 characters), text, pretext and footer.

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

use super::{http, template, Integration, SendContext, SendError, Sent, ValidateContext};
use crate::domain::settings::SlackSettings;
use crate::domain::{AlertStatus, TemplateField, WebhookPayload};
use crate::templating::Texts;

pub struct Slack;

/// Alertmanager's limit on an attachment's title, in characters.
const MAX_TITLE_CHARS: usize = 1024;

#[derive(Debug, Serialize, PartialEq)]
pub struct Attachment {
    pub title: String,
    pub title_link: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pretext: String,
    pub text: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub footer: String,
    pub fallback: String,
    pub color: &'static str,
    pub mrkdwn_in: [&'static str; 3],
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Message {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    pub username: String,
    pub attachments: Vec<Attachment>,
}

/// The message for `p`: Alertmanager's default Slack template, with the
/// fields `texts` gives in place of the defaults. The fallback (what
/// notifications show) is built from the title sent.
pub fn message(
    p: &WebhookPayload,
    channel: Option<String>,
    username: Option<String>,
    texts: &Texts,
) -> Message {
    let title = match texts.get(TemplateField::Title) {
        Some(t) => t.chars().take(MAX_TITLE_CHARS).collect(),
        None => template::subject(p),
    };
    let text = texts
        .get(TemplateField::Text)
        .map_or_else(|| template::descriptions(p), str::to_owned);
    let field = |f| texts.get(f).unwrap_or_default().to_owned();
    let title_link = template::alertmanager_url(p);
    Message {
        channel,
        username: username.unwrap_or_else(|| "Alertmanager".into()),
        attachments: vec![Attachment {
            fallback: format!("{title} | {title_link}"),
            pretext: field(TemplateField::Pretext),
            text,
            footer: field(TemplateField::Footer),
            color: if p.status == AlertStatus::Firing {
                "danger"
            } else {
                "good"
            },
            mrkdwn_in: ["fallback", "pretext", "text"],
            title,
            title_link,
        }],
    }
}

/// Slack answers 200 to some failures: success is a body of `ok` (incoming
/// webhooks) or JSON with `"ok": true` (the Web API), as Alertmanager ≥ 0.26 checks.
fn check_body(body: &str) -> Result<(), String> {
    let body = body.trim();
    if body == "ok" {
        return Ok(());
    }
    match serde_json::from_str::<Value>(body) {
        Ok(v) if v.get("ok").and_then(Value::as_bool) == Some(true) => Ok(()),
        Ok(v) => Err(format!(
            "Slack answered an error: {}",
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("ok is not true")
        )),
        Err(_) => Err(format!(
            "Slack answered an unexpected body: {}",
            body.chars().take(200).collect::<String>()
        )),
    }
}

#[async_trait]
impl Integration for Slack {
    type Settings = SlackSettings;

    fn validate(&self, s: &SlackSettings, ctx: &ValidateContext<'_>) -> Result<(), String> {
        ctx.url("api_url", s.api_url.expose())
    }

    fn destination(&self, s: &SlackSettings) -> Option<String> {
        Some(super::destination_key("slack", &[s.api_url.expose()]))
    }

    async fn send(
        &self,
        ctx: &SendContext,
        s: &SlackSettings,
        payload: &WebhookPayload,
        texts: &Texts,
    ) -> Result<Sent, SendError> {
        let url = ctx.checked_url(s.api_url.expose()).await?;
        let body = message(payload, s.channel.clone(), s.username.clone(), texts);
        http::send(ctx.http.post(url).json(&body), check_body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_check() {
        assert!(check_body("ok").is_ok());
        assert!(check_body(r#"{"ok":true}"#).is_ok());
        assert!(check_body(r#"{"ok":false,"error":"channel_not_found"}"#)
            .unwrap_err()
            .contains("channel_not_found"));
        assert!(check_body("invalid_payload").is_err());
    }
}

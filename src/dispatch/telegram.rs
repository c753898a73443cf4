//! Telegram, through the Bot API's `sendMessage`, with what Alertmanager's
//! default Telegram template gives (the firing and resolved alerts with their
//! labels, annotations and source), escaped for the parse mode and cut to
//! Telegram's 4,096-character limit without breaking an entity or a tag.
//!
//! The relay form (`webhook_url`, the original setup's `tele_webhook`) posts
//! the Alertmanager payload to a relay instead; it is billed as telegram too.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::http::{self, Answer};
use super::webhook::{post_payload, Auth};
use super::{
    parse_settings, template, Integration, Reason, SendContext, SendError, Sent, ValidateContext,
};
use crate::domain::WebhookPayload;

pub struct Telegram;

/// Telegram's limit on a message's text.
pub const MAX_MESSAGE_CHARS: usize = 4096;
const DEFAULT_API_URL: &str = "https://api.telegram.org";

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
enum ChatId {
    Id(i64),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    bot_token: Option<String>,
    #[serde(default)]
    chat_id: Option<ChatId>,
    #[serde(default)]
    api_url: Option<String>,
    #[serde(default)]
    parse_mode: Option<String>,
    #[serde(default)]
    message_thread_id: Option<i64>,
    #[serde(default)]
    disable_notifications: bool,
    /// A relay that accepts the Alertmanager payload, instead of the Bot API.
    #[serde(default)]
    webhook_url: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ParseMode {
    Html,
    MarkdownV2,
    Markdown,
    Plain,
}

impl ParseMode {
    fn parse(s: Option<&str>) -> Result<Self, String> {
        match s.unwrap_or("HTML") {
            "HTML" => Ok(ParseMode::Html),
            "MarkdownV2" => Ok(ParseMode::MarkdownV2),
            "Markdown" => Ok(ParseMode::Markdown),
            "" => Ok(ParseMode::Plain),
            other => Err(format!(
                "settings.parse_mode {other:?} is not one of \"HTML\", \"MarkdownV2\", \"Markdown\" or \"\""
            )),
        }
    }

    fn api_name(self) -> Option<&'static str> {
        match self {
            ParseMode::Html => Some("HTML"),
            ParseMode::MarkdownV2 => Some("MarkdownV2"),
            ParseMode::Markdown => Some("Markdown"),
            ParseMode::Plain => None,
        }
    }

    fn escape(self, text: &str) -> String {
        let specials: &[char] = match self {
            ParseMode::Html => return template::html_escape(text),
            ParseMode::Plain => return text.to_owned(),
            ParseMode::MarkdownV2 => &[
                '\\', '_', '*', '[', ']', '(', ')', '~', '`', '>', '#', '+', '-', '=', '|', '{',
                '}', '.', '!',
            ],
            ParseMode::Markdown => &['\\', '_', '*', '`', '['],
        };
        let mut out = String::with_capacity(text.len() + 16);
        for c in text.chars() {
            if specials.contains(&c) {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    /// Cuts escaped text to Telegram's limit without splitting an escape.
    fn truncate(self, text: &str, max: usize) -> String {
        if text.chars().count() <= max {
            return text.to_owned();
        }
        match self {
            ParseMode::Html => template::truncate_html(text, max),
            ParseMode::Plain => text.chars().take(max - 1).chain(['…']).collect(),
            ParseMode::MarkdownV2 | ParseMode::Markdown => {
                let mut out: String = text.chars().take(max - 2).collect();
                // An odd run of trailing backslashes would escape what follows.
                let trailing = out.chars().rev().take_while(|c| *c == '\\').count();
                if trailing % 2 == 1 {
                    out.pop();
                }
                // `…` is no special character in either Markdown.
                out.push('…');
                out
            }
        }
    }
}

/// The message text for `p` in `mode`, within Telegram's limit.
pub fn message_text(p: &WebhookPayload, parse_mode: Option<&str>) -> Result<String, String> {
    let mode = ParseMode::parse(parse_mode)?;
    let text = template::firing_and_resolved(p);
    Ok(mode.truncate(&mode.escape(text.trim_end()), MAX_MESSAGE_CHARS))
}

fn settings(value: &Value) -> Result<Settings, String> {
    let s: Settings = parse_settings(value)?;
    ParseMode::parse(s.parse_mode.as_deref())?;
    match (&s.webhook_url, &s.bot_token, &s.chat_id) {
        (Some(_), None, None) => Ok(s),
        (Some(_), _, _) => {
            Err("settings: webhook_url (the relay form) goes without bot_token and chat_id".into())
        }
        (None, Some(token), Some(_)) if !token.is_empty() => Ok(s),
        _ => {
            Err("settings: bot_token and chat_id are required (or webhook_url for a relay)".into())
        }
    }
}

/// Telegram's answer body: `{"ok": false, "error_code": 429, "description": "...",
/// "parameters": {"retry_after": 5}}`.
#[derive(Debug, Default, Deserialize)]
struct BotAnswer {
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    description: String,
    #[serde(default)]
    parameters: Option<BotParameters>,
}

#[derive(Debug, Deserialize)]
struct BotParameters {
    #[serde(default)]
    retry_after: Option<u64>,
}

/// Classifies the Bot API's answer: 429 waits for `retry_after`; 401 and 404
/// (a bad token) are authError; 400 (chat not found) and 403 (bot blocked or
/// removed) will not pass on a retry; 5xx may.
fn classify(answer: &Answer) -> Result<Sent, SendError> {
    let body: BotAnswer = serde_json::from_str(&answer.body).unwrap_or_default();
    if answer.status.is_success() && body.ok {
        return Ok(answer.sent());
    }
    let code = answer.status.as_u16();
    let detail = if body.description.is_empty() {
        answer.snippet()
    } else {
        body.description.clone()
    };
    let (reason, retryable) = match code {
        429 => (Reason::RateLimited, true),
        401 | 404 => (Reason::AuthError, false),
        400 | 403 => (Reason::ClientError, false),
        500..=599 => (Reason::ServerError, true),
        200..=299 => (Reason::ClientError, false),
        _ => http::classify_status(answer.status),
    };
    let hint = body
        .parameters
        .and_then(|p| p.retry_after)
        .map(std::time::Duration::from_secs)
        .or(answer.retry_after);
    Err(SendError {
        reason,
        retryable,
        retry_after: hint,
        status: Some(code),
        detail: format!("Telegram answered {code}: {detail}"),
    })
}

#[async_trait]
impl Integration for Telegram {
    fn name(&self) -> &'static str {
        "telegram"
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        &["bot_token", "webhook_url"]
    }

    fn validate(&self, value: &Value, ctx: &ValidateContext<'_>) -> Result<(), String> {
        let s = settings(value)?;
        if let Some(url) = &s.webhook_url {
            ctx.url("webhook_url", url)?;
        }
        if let Some(url) = &s.api_url {
            ctx.url("api_url", url)?;
        }
        if let Some(ChatId::Name(name)) = &s.chat_id {
            if !name.starts_with('@') && name.parse::<i64>().is_err() {
                return Err(format!(
                    "settings.chat_id {name:?} is neither a number nor an @channel name"
                ));
            }
        }
        Ok(())
    }

    fn destination(&self, value: &Value) -> Option<String> {
        let s: Settings = parse_settings(value).ok()?;
        if let Some(relay) = &s.webhook_url {
            return Some(super::destination_key("telegram-relay", &[relay]));
        }
        let chat = match s.chat_id? {
            ChatId::Id(id) => id.to_string(),
            ChatId::Name(name) => name,
        };
        Some(super::destination_key(
            "telegram",
            &[s.bot_token.as_deref()?, &chat],
        ))
    }

    async fn send(
        &self,
        ctx: &SendContext,
        value: &Value,
        payload: &WebhookPayload,
    ) -> Result<Sent, SendError> {
        let s = settings(value).map_err(|e| SendError::permanent(Reason::Other, e))?;
        if let Some(relay) = &s.webhook_url {
            return post_payload(ctx, relay, payload, Auth::None).await;
        }
        let (Some(token), Some(chat_id)) = (&s.bot_token, &s.chat_id) else {
            return Err(SendError::permanent(
                Reason::Other,
                "bot_token and chat_id are required",
            ));
        };
        let mode = ParseMode::parse(s.parse_mode.as_deref())
            .map_err(|e| SendError::permanent(Reason::Other, e))?;
        let text = message_text(payload, s.parse_mode.as_deref())
            .map_err(|e| SendError::permanent(Reason::Other, e))?;
        // Bot tokens hold a colon: build the path by hand, not with Url::join
        // (which would read `123:` as a scheme).
        let base = s
            .api_url
            .as_deref()
            .unwrap_or(DEFAULT_API_URL)
            .trim_end_matches('/');
        let url = ctx
            .checked_url(&format!("{base}/bot{token}/sendMessage"))
            .await?;
        let mut body = json!({
            "chat_id": chat_id,
            "text": text,
            "disable_web_page_preview": true,
            "disable_notification": s.disable_notifications,
        });
        if let Some(mode) = mode.api_name() {
            body["parse_mode"] = json!(mode);
        }
        if let Some(thread) = s.message_thread_id {
            body["message_thread_id"] = json!(thread);
        }
        let answer = http::exchange(ctx.http.post(url).json(&body)).await?;
        classify(&answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_escapes_and_truncation() {
        assert_eq!(
            ParseMode::MarkdownV2.escape("a-b = c.d!"),
            r"a\-b \= c\.d\!"
        );
        assert_eq!(ParseMode::Html.escape("<b>&"), "&lt;b&gt;&amp;");
        let long = ParseMode::MarkdownV2.escape(&"-".repeat(5000));
        let cut = ParseMode::MarkdownV2.truncate(&long, MAX_MESSAGE_CHARS);
        assert!(cut.chars().count() <= MAX_MESSAGE_CHARS);
        let body = cut.trim_end_matches('…');
        assert_eq!(
            body.chars().rev().take_while(|c| *c == '\\').count() % 2,
            0,
            "no dangling escape"
        );
    }

    #[test]
    fn settings_forms() {
        assert!(settings(&json!({"bot_token": "1:x", "chat_id": -100})).is_ok());
        assert!(settings(&json!({"bot_token": "1:x", "chat_id": "@ops"})).is_ok());
        assert!(settings(&json!({"webhook_url": "https://relay/x"})).is_ok());
        assert!(settings(&json!({"bot_token": "1:x"})).is_err());
        assert!(settings(&json!({"webhook_url": "https://relay/x", "bot_token": "1:x"})).is_err());
        assert!(
            settings(&json!({"bot_token": "1:x", "chat_id": 1, "parse_mode": "BBCode"})).is_err()
        );
    }
}

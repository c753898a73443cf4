//! Telegram, through the Bot API's `sendMessage`, with what Alertmanager's
//! default Telegram template gives (the firing and resolved alerts with their
//! labels, annotations and source), escaped for the parse mode and cut to
//! Telegram's 4,096-character limit without breaking an entity or a tag. A
//! channel's `message` template replaces that text.
//!
//! The relay form (`webhook_url`, the original setup's `tele_webhook`) posts
//! the Alertmanager payload to a relay instead; it is billed as telegram too.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use super::http::{self, Answer};
use super::webhook::{post_payload, Auth};
use super::{template, Integration, Reason, SendContext, SendError, Sent, ValidateContext};
use crate::domain::settings::{ParseMode, TelegramSettings, TelegramTarget};
use crate::domain::{TemplateField, WebhookPayload};
use crate::templating::Texts;

pub struct Telegram;

/// Telegram's limit on a message's text.
pub const MAX_MESSAGE_CHARS: usize = 4096;
const DEFAULT_API_URL: &str = "https://api.telegram.org";

impl ParseMode {
    fn escape(self, text: &str) -> String {
        let specials: &[char] = match self {
            ParseMode::Html => return crate::html::html_escape(text),
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
            ParseMode::Html => crate::html::truncate_html(text, max),
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

/// The message text for `p` in `mode`, within Telegram's limit. A `message`
/// template's text is sent as it is, as Alertmanager sends it: it is written
/// for the parse mode (markup included; values are escaped with `html` where
/// the mode is HTML), so only cut. One that gives nothing but blanks, which
/// Telegram would refuse, leaves the default.
pub fn message_text(p: &WebhookPayload, mode: ParseMode, texts: &Texts) -> String {
    match texts
        .get(TemplateField::Message)
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        Some(text) => mode.truncate(text, MAX_MESSAGE_CHARS),
        None => {
            let text = template::firing_and_resolved(p);
            mode.truncate(&mode.escape(text.trim_end()), MAX_MESSAGE_CHARS)
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
    type Settings = TelegramSettings;

    fn validate(&self, s: &TelegramSettings, ctx: &ValidateContext<'_>) -> Result<(), String> {
        if let Some(url) = &s.webhook_url {
            ctx.url("webhook_url", url.expose())?;
        }
        if let Some(url) = &s.api_url {
            ctx.url("api_url", url)?;
        }
        Ok(())
    }

    fn destination(&self, s: &TelegramSettings) -> Option<String> {
        Some(match s.target() {
            TelegramTarget::Relay(relay) => {
                super::destination_key("telegram-relay", &[relay.expose()])
            }
            TelegramTarget::Bot { token, chat_id } => {
                super::destination_key("telegram", &[token.expose(), &chat_id.to_string()])
            }
        })
    }

    async fn send(
        &self,
        ctx: &SendContext,
        s: &TelegramSettings,
        payload: &WebhookPayload,
        texts: &Texts,
    ) -> Result<Sent, SendError> {
        let (token, chat_id) = match s.target() {
            TelegramTarget::Relay(relay) => {
                return post_payload(ctx, relay.expose(), payload, Auth::None).await
            }
            TelegramTarget::Bot { token, chat_id } => (token, chat_id),
        };
        let mode = s.parse_mode();
        let text = message_text(payload, mode, texts);
        // Bot tokens hold a colon: build the path by hand, not with Url::join
        // (which would read `123:` as a scheme).
        let base = s
            .api_url
            .as_deref()
            .unwrap_or(DEFAULT_API_URL)
            .trim_end_matches('/');
        let url = ctx
            .checked_url(&format!("{base}/bot{}/sendMessage", token.expose()))
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
}

//! Generic webhook: posts Alertmanager's v4 payload holding only the message's
//! (so one user's) alerts, optionally with bearer or basic auth and `max_alerts`.

use std::borrow::Cow;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::{
    http, parse_settings, Integration, Reason, SendContext, SendError, Sent, ValidateContext,
};
use crate::domain::WebhookPayload;

pub struct Webhook;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicAuth {
    username: String,
    #[serde(default)]
    password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    #[serde(default)]
    bearer_token: Option<String>,
    #[serde(default)]
    basic_auth: Option<BasicAuth>,
    /// At most this many alerts per message (0: all); the rest are counted in
    /// `truncatedAlerts`, as Alertmanager does.
    #[serde(default)]
    max_alerts: usize,
}

/// The payload to send: at most `max_alerts` alerts, the rest counted.
fn truncate(payload: &WebhookPayload, max_alerts: usize) -> Cow<'_, WebhookPayload> {
    if max_alerts == 0 || payload.alerts.len() <= max_alerts {
        return Cow::Borrowed(payload);
    }
    let mut p = payload.clone();
    p.truncated_alerts = (p.alerts.len() - max_alerts) as u64;
    p.alerts.truncate(max_alerts);
    Cow::Owned(p)
}

pub(crate) enum Auth<'a> {
    None,
    Bearer(&'a str),
    Basic(&'a str, &'a str),
}

/// Posts an Alertmanager v4 payload to a user-supplied URL (also Telegram's relay form).
pub(crate) async fn post_payload(
    ctx: &SendContext,
    raw_url: &str,
    payload: &WebhookPayload,
    auth: Auth<'_>,
) -> Result<Sent, SendError> {
    let url = ctx.checked_url(raw_url).await?;
    let mut request = ctx.http.post(url).json(payload);
    match auth {
        Auth::None => {}
        Auth::Bearer(token) => request = request.bearer_auth(token),
        Auth::Basic(user, password) => request = request.basic_auth(user, Some(password)),
    }
    http::send(request, |_| Ok(())).await
}

#[async_trait]
impl Integration for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        &["url", "bearer_token", "basic_auth.password"]
    }

    fn validate(&self, settings: &Value, ctx: &ValidateContext<'_>) -> Result<(), String> {
        let s: Settings = parse_settings(settings)?;
        ctx.url("url", &s.url)?;
        if s.bearer_token.is_some() && s.basic_auth.is_some() {
            return Err("settings: bearer_token and basic_auth are mutually exclusive".into());
        }
        Ok(())
    }

    fn destination(&self, settings: &Value) -> Option<String> {
        let s: Settings = parse_settings(settings).ok()?;
        Some(super::destination_key("webhook", &[&s.url]))
    }

    async fn send(
        &self,
        ctx: &SendContext,
        settings: &Value,
        payload: &WebhookPayload,
    ) -> Result<Sent, SendError> {
        let s: Settings =
            parse_settings(settings).map_err(|e| SendError::permanent(Reason::Other, e))?;
        let auth = match (&s.bearer_token, &s.basic_auth) {
            (Some(token), _) => Auth::Bearer(token),
            (None, Some(b)) => Auth::Basic(&b.username, &b.password),
            (None, None) => Auth::None,
        };
        post_payload(ctx, &s.url, &truncate(payload, s.max_alerts), auth).await
    }
}

//! Generic webhook: posts Alertmanager's v4 payload holding only the message's
//! (so one user's) alerts, optionally with bearer or basic auth and `max_alerts`.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::{http, parse_settings, Integration, SendContext, SendError, Sent, ValidateContext};
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
fn truncate(payload: &WebhookPayload, max_alerts: usize) -> std::borrow::Cow<'_, WebhookPayload> {
    if max_alerts == 0 || payload.alerts.len() <= max_alerts {
        return std::borrow::Cow::Borrowed(payload);
    }
    let mut p = payload.clone();
    p.truncated_alerts = (p.alerts.len() - max_alerts) as u64;
    p.alerts.truncate(max_alerts);
    std::borrow::Cow::Owned(p)
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
        http::check_url(&s.url, &ctx.settings.outbound_allow)
            .map_err(|e| format!("settings.url: {e}"))?;
        if s.bearer_token.is_some() && s.basic_auth.is_some() {
            return Err("settings: bearer_token and basic_auth are mutually exclusive".into());
        }
        Ok(())
    }

    async fn send(
        &self,
        ctx: &SendContext,
        settings: &Value,
        payload: &WebhookPayload,
    ) -> Result<Sent, SendError> {
        let s: Settings =
            parse_settings(settings).map_err(|e| SendError::permanent(super::Reason::Other, e))?;
        let url = http::check_url(&s.url, &ctx.settings.outbound_allow)
            .map_err(|e| SendError::permanent(super::Reason::ClientError, e))?;
        let mut request = ctx.http.post(url).json(&*truncate(payload, s.max_alerts));
        if let Some(token) = &s.bearer_token {
            request = request.bearer_auth(token);
        } else if let Some(auth) = &s.basic_auth {
            request = request.basic_auth(&auth.username, Some(&auth.password));
        }
        http::send(request, |_| Ok(())).await
    }
}

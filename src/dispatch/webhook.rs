//! Generic webhook: posts Alertmanager's v4 payload holding only the message's
//! (so one user's) alerts, optionally with bearer or basic auth and `max_alerts`.

use std::borrow::Cow;

use super::{http, Integration, SendContext, SendError, Sent, ValidateContext};
use crate::domain::settings::WebhookSettings;
use crate::domain::WebhookPayload;
use crate::templating::Texts;
use async_trait::async_trait;

pub struct Webhook;

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
    type Settings = WebhookSettings;

    fn validate(&self, s: &WebhookSettings, ctx: &ValidateContext<'_>) -> Result<(), String> {
        ctx.url("url", s.url.expose())
    }

    fn destination(&self, s: &WebhookSettings) -> Option<String> {
        Some(super::destination_key("webhook", &[s.url.expose()]))
    }

    async fn send(
        &self,
        ctx: &SendContext,
        s: &WebhookSettings,
        payload: &WebhookPayload,
        _texts: &Texts,
    ) -> Result<Sent, SendError> {
        let auth = match (&s.bearer_token, &s.basic_auth) {
            (Some(token), _) => Auth::Bearer(token.expose()),
            (None, Some(b)) => Auth::Basic(&b.username, b.password.expose()),
            (None, None) => Auth::None,
        };
        post_payload(ctx, s.url.expose(), &truncate(payload, s.max_alerts), auth).await
    }
}

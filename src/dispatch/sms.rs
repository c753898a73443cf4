//! SMS through a Twilio-compatible Messages API (the operator's `[sms]`): a
//! form POST of To, From and Body with basic auth. The body is short, e.g.
//! `[FIRING:2] high_cpu u1: CPU above 90% on db-1` (or what the channel's
//! `text` template gives), cut to at most [`MAX_SEGMENTS`] segments; the
//! segments used are recorded on the attempt.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::http::{self, Answer};
use super::{template, Integration, Reason, SendContext, SendError, Sent, ValidateContext};
use crate::config::SmsSettings as SmsGateway;
use crate::domain::settings::SmsSettings;
use crate::domain::{TemplateField, WebhookPayload};
use crate::templating::Texts;

pub struct Sms;

/// The longest body sent, in segments.
pub const MAX_SEGMENTS: usize = 2;
const DEFAULT_API_URL: &str = "https://api.twilio.com";

const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM_EXTENSION: &str = "^{}\\[~]|€\u{c}";

/// Septets of a text in the GSM 03.38 alphabet, or `None` if it needs UCS-2.
fn gsm_septets(text: &str) -> Option<usize> {
    text.chars().try_fold(0, |n, c| {
        if GSM_BASIC.contains(c) {
            Some(n + 1)
        } else if GSM_EXTENSION.contains(c) {
            Some(n + 2)
        } else {
            None
        }
    })
}

/// How many segments a text takes: 160 GSM septets in one, 153 each when
/// concatenated; 70 UCS-2 units in one, 67 each when concatenated.
pub fn segments(text: &str) -> usize {
    let (len, single, multi) = match gsm_septets(text) {
        Some(septets) => (septets, 160, 153),
        None => (text.encode_utf16().count(), 70, 67),
    };
    if len <= single {
        1
    } else {
        len.div_ceil(multi)
    }
}

/// The SMS for `p`: the `text` template's text, or by default the subject
/// then the alerts' descriptions; cut with an ellipsis to fit
/// [`MAX_SEGMENTS`]. A template that gives only blanks leaves the default.
pub fn body(p: &WebhookPayload, texts: &Texts) -> String {
    match texts
        .get(TemplateField::Text)
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        Some(text) => fit(text.to_owned()),
        None => fit(default_text(p)),
    }
}

fn default_text(p: &WebhookPayload) -> String {
    let mut text = template::subject(p).trim_end().to_owned();
    let descriptions: Vec<String> = template::descriptions(p)
        .lines()
        .map(str::to_owned)
        .collect();
    if !descriptions.is_empty() {
        text.push_str(": ");
        text.push_str(&descriptions.join("; "));
    }
    text
}

/// `text`, cut with an ellipsis to fit [`MAX_SEGMENTS`].
fn fit(text: String) -> String {
    if segments(&text) <= MAX_SEGMENTS {
        return text;
    }
    // "..." keeps a GSM text in GSM; "…" is fine once it is UCS-2 anyway.
    let ellipsis = if gsm_septets(&text).is_some() {
        "..."
    } else {
        "…"
    };
    // No more characters than the largest segments could hold, then trim to fit.
    let mut chars: Vec<char> = text.chars().take(MAX_SEGMENTS * 160).collect();
    while !chars.is_empty() {
        chars.pop();
        let candidate: String = chars.iter().collect::<String>() + ellipsis;
        if segments(&candidate) <= MAX_SEGMENTS {
            return candidate;
        }
    }
    ellipsis.to_owned()
}

struct Gateway<'a> {
    api_url: &'a str,
    account_sid: &'a str,
    auth_token: &'a str,
    from: &'a str,
}

fn gateway(sms: &SmsGateway) -> Result<Gateway<'_>, String> {
    match (&sms.account_sid, &sms.auth_token, &sms.from) {
        (Some(account_sid), Some(token), Some(from)) => Ok(Gateway {
            api_url: sms.api_url.as_deref().unwrap_or(DEFAULT_API_URL),
            account_sid,
            auth_token: token.expose(),
            from,
        }),
        _ => Err(
            "sms needs [sms] account_sid, auth_token and from in notimeter's configuration".into(),
        ),
    }
}

/// Twilio's error body: `{"code": 21211, "message": "...", "status": 400}`.
#[derive(Debug, Default, Deserialize)]
struct ApiError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct Created {
    #[serde(default)]
    num_segments: Option<Value>,
}

fn classify(answer: &Answer, counted: usize) -> Result<Sent, SendError> {
    if answer.status.is_success() {
        // Twilio says how many segments it used; our own count otherwise.
        let reported = serde_json::from_str::<Created>(&answer.body)
            .ok()
            .and_then(|c| c.num_segments)
            .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()));
        return Ok(Sent {
            status: Some(answer.status.as_u16()),
            segments: Some(reported.unwrap_or(counted as i64)),
        });
    }
    let body: ApiError = serde_json::from_str(&answer.body).unwrap_or_default();
    let mut error = answer.error();
    if body.code == Some(20429) {
        error.reason = Reason::RateLimited;
        error.retryable = true;
    }
    if !body.message.is_empty() {
        error.detail = format!(
            "SMS gateway answered {}: {} (code {})",
            answer.status.as_u16(),
            body.message,
            body.code.unwrap_or_default()
        );
    }
    Err(error)
}

#[async_trait]
impl Integration for Sms {
    type Settings = SmsSettings;

    fn validate(&self, _s: &SmsSettings, ctx: &ValidateContext<'_>) -> Result<(), String> {
        gateway(&ctx.settings.sms).map(drop)
    }

    async fn send(
        &self,
        ctx: &SendContext,
        s: &SmsSettings,
        payload: &WebhookPayload,
        texts: &Texts,
    ) -> Result<Sent, SendError> {
        let gw = gateway(&ctx.settings.sms).map_err(|e| SendError::permanent(Reason::Other, e))?;
        let text = body(payload, texts);
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            gw.api_url.trim_end_matches('/'),
            gw.account_sid
        );
        // The gateway is the operator's, not the user's: no outbound guard here.
        let request = ctx
            .http
            .post(url)
            .basic_auth(gw.account_sid, Some(gw.auth_token))
            .form(&[
                ("To", s.to.as_str()),
                ("From", gw.from),
                ("Body", text.as_str()),
            ]);
        let answer = http::exchange(request).await?;
        classify(&answer, segments(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn segment_counts() {
        assert_eq!(segments(&"a".repeat(160)), 1);
        assert_eq!(segments(&"a".repeat(161)), 2);
        assert_eq!(segments(&"a".repeat(306)), 2);
        assert_eq!(segments(&"a".repeat(307)), 3);
        assert_eq!(
            segments(&"€".repeat(80)),
            1,
            "extension characters take two septets"
        );
        assert_eq!(segments(&"€".repeat(81)), 2);
        assert_eq!(segments(&"ж".repeat(70)), 1);
        assert_eq!(segments(&"ж".repeat(71)), 2);
    }

    proptest! {
        #[test]
        fn bodies_fit(desc in "\\PC{0,600}") {
            let p: WebhookPayload = serde_json::from_value(serde_json::json!({
                "version": "4", "groupKey": "g", "truncatedAlerts": 0, "status": "firing", "receiver": "r",
                "groupLabels": {"alertname": "high_cpu", "user_id": "u1"}, "commonLabels": {"alertname": "high_cpu", "user_id": "u1"},
                "commonAnnotations": {}, "externalURL": "http://am",
                "alerts": [{"status": "firing", "labels": {}, "annotations": {"description": desc}}]
            })).unwrap();
            let b = body(&p, &Texts::default());
            prop_assert!(segments(&b) <= MAX_SEGMENTS);
            prop_assert!(b.starts_with("[FIRING:1] high_cpu u1"));
        }
    }
}

//! Email over SMTP (lettre), through the operator's `[smtp]` smarthost. The
//! subject is Alertmanager's default (`[FIRING:N] …`); the message has a text
//! part and an HTML part like Alertmanager's default email, and a Message-Id.
//! Label and annotation values only ever reach the bodies, which are
//! MIME-encoded; the subject is stripped of control characters, so no value
//! can add a header. A channel's templates may give the subject, the HTML
//! part and the text part (see `crate::templating` for the HTML escaping).

use std::time::Duration;

use super::{template, Integration, Reason, SendContext, SendError, Sent, ValidateContext};
use crate::config::{SmtpSettings, SmtpTls};
use crate::domain::settings::EmailSettings;
use crate::domain::{Alert, TemplateField, WebhookPayload};
use crate::templating::Texts;
use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rand::Rng;

struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

pub struct Email {
    /// The transport, or why there is none.
    smtp: Result<Smtp, String>,
}

fn build(smtp: &SmtpSettings, timeout: Duration) -> Result<Smtp, String> {
    let (Some(smarthost), Some(from)) = (&smtp.smarthost, &smtp.from) else {
        return Err("email needs [smtp] smarthost and from in notimeter's configuration".into());
    };
    let from: Mailbox = from
        .parse()
        .map_err(|e| format!("[smtp] from {from:?}: {e}"))?;
    let (host, port) = match smarthost.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("[smtp] smarthost {smarthost:?}: bad port"))?,
        ),
        None => (
            smarthost.as_str(),
            if smtp.tls == SmtpTls::Tls { 465 } else { 25 },
        ),
    };
    let builder = match smtp.tls {
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
            .map_err(|e| format!("[smtp] smarthost {host:?}: {e}"))?,
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
            .map_err(|e| format!("[smtp] smarthost {host:?}: {e}"))?,
    };
    let mut builder = builder.port(port).timeout(Some(timeout));
    if let Some(user) = &smtp.username {
        let password = smtp
            .password
            .as_ref()
            .map(|p| p.expose().to_owned())
            .unwrap_or_default();
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    Ok(Smtp {
        transport: builder.build(),
        from,
    })
}

/// Header values built from alert data: no control characters (no CR/LF).
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn html_alerts(out: &mut String, title: &str, alerts: &[&Alert]) {
    if alerts.is_empty() {
        return;
    }
    let e = crate::html::html_escape;
    out.push_str(&format!(
        "<tr><td style=\"padding:10px 0 4px;font-size:16px\"><strong>[{}] {title}</strong></td></tr>\n",
        alerts.len()
    ));
    for a in alerts {
        out.push_str("<tr><td style=\"padding:4px 0 12px;border-top:1px solid #e9e9e9\">\n<strong>Labels</strong><br />\n");
        for (k, v) in &a.labels {
            out.push_str(&format!("{} = {}<br />\n", e(k), e(v)));
        }
        if !a.annotations.is_empty() {
            out.push_str("<strong>Annotations</strong><br />\n");
            for (k, v) in &a.annotations {
                out.push_str(&format!("{} = {}<br />\n", e(k), e(v)));
            }
        }
        if !a.generator_url.is_empty() {
            out.push_str(&format!(
                "<a href=\"{}\">Source</a><br />\n",
                e(&a.generator_url)
            ));
        }
        out.push_str("</td></tr>\n");
    }
}

/// The HTML part, shaped like Alertmanager's default email: a header with the
/// count and group labels, a link to Alertmanager, then firing and resolved alerts.
pub fn html_body(p: &WebhookPayload) -> String {
    let e = crate::html::html_escape;
    let (firing, resolved) = template::by_status(p);
    let (color, headline) = if firing.is_empty() {
        (
            "#68B90F",
            format!("{} alert(s) resolved for", resolved.len()),
        )
    } else {
        ("#E6522C", format!("{} alert(s) firing for", firing.len()))
    };
    let group: Vec<String> = p
        .group_labels
        .iter()
        .map(|(k, v)| format!("{}={}", e(k), e(v)))
        .collect();
    let mut out = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"UTF-8\"><title>{}</title></head>\n\
         <body style=\"font-family:Helvetica,Arial,sans-serif;font-size:14px;margin:0;padding:20px\">\n\
         <table width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" style=\"max-width:600px\">\n\
         <tr><td style=\"background:{color};color:#fff;padding:20px;font-size:16px\">{} {}</td></tr>\n\
         <tr><td style=\"padding:10px 0\"><a href=\"{}\">View in Alertmanager</a></td></tr>\n",
        e(template::subject(p).trim_end()),
        e(&headline),
        group.join(" "),
        e(&template::alertmanager_url(p)),
    );
    html_alerts(&mut out, "Firing", &firing);
    html_alerts(&mut out, "Resolved", &resolved);
    out.push_str("<tr><td style=\"padding-top:20px;color:#999;font-size:12px\">Sent by notimeter</td></tr>\n</table></body></html>\n");
    out
}

/// The whole message for `p` to `to`, with the parts `texts` gives in place
/// of the defaults. A templated subject is stripped of control characters
/// like the default one, so a template cannot add a header either.
fn message(
    from: &Mailbox,
    to: &[Mailbox],
    p: &WebhookPayload,
    texts: &Texts,
) -> Result<Message, String> {
    let subject = match texts.get(TemplateField::Subject) {
        Some(s) => header_safe(s.trim()),
        None => header_safe(template::subject(p).trim_end()),
    };
    let text = texts
        .get(TemplateField::Text)
        .map_or_else(|| template::firing_and_resolved(p), str::to_owned);
    let html = texts
        .get(TemplateField::Html)
        .map_or_else(|| html_body(p), str::to_owned);
    let domain = from.email.domain().to_owned();
    let id = format!(
        "<{}.{}@{domain}>",
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default(),
        rand::rng().random::<u64>()
    );
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(subject)
        .message_id(Some(id))
        .date_now();
    for m in to {
        builder = builder.to(m.clone());
    }
    builder
        .multipart(MultiPart::alternative_plain_html(text, html))
        .map_err(|e| format!("building the message: {e}"))
}

/// SMTP's answer classes: 4xx may pass later, 5xx will not (535: bad credentials).
fn classify(err: lettre::transport::smtp::Error) -> SendError {
    let code: Option<u16> = err.status().and_then(|c| c.to_string().parse().ok());
    let detail = err.to_string();
    if err.is_transient() {
        return SendError {
            reason: Reason::ServerError,
            retryable: true,
            retry_after: None,
            status: code,
            detail,
        };
    }
    if err.is_permanent() {
        let reason = if matches!(code, Some(530 | 534 | 535 | 538)) {
            Reason::AuthError
        } else {
            Reason::ClientError
        };
        return SendError {
            reason,
            retryable: false,
            retry_after: None,
            status: code,
            detail,
        };
    }
    SendError {
        reason: if err.is_timeout() {
            Reason::ContextDeadlineExceeded
        } else {
            Reason::Other
        },
        retryable: true,
        retry_after: None,
        status: code,
        detail,
    }
}

impl Email {
    pub fn new(smtp: &SmtpSettings, timeout: Duration) -> Self {
        Self {
            smtp: build(smtp, timeout),
        }
    }
}

#[async_trait]
impl Integration for Email {
    type Settings = EmailSettings;

    fn validate(&self, _s: &EmailSettings, _ctx: &ValidateContext<'_>) -> Result<(), String> {
        self.smtp.as_ref().map(drop).map_err(Clone::clone)
    }

    async fn send(
        &self,
        _ctx: &SendContext,
        s: &EmailSettings,
        payload: &WebhookPayload,
        texts: &Texts,
    ) -> Result<Sent, SendError> {
        let smtp = self
            .smtp
            .as_ref()
            .map_err(|e| SendError::permanent(Reason::Other, e.clone()))?;
        let msg = message(&smtp.from, &s.to.mailboxes(), payload, texts)
            .map_err(|e| SendError::permanent(Reason::Other, e))?;
        let response = smtp.transport.send(msg).await.map_err(classify)?;
        Ok(Sent {
            status: response.code().to_string().parse().ok(),
            segments: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_lose_line_breaks() {
        assert_eq!(header_safe("a\r\nBcc: x@y"), "a  Bcc: x@y");
    }
}

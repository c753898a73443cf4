//! Delivery: one file per integration, a retry policy, and the worker pool that
//! works off the outbox.
//!
//! Adding an integration is one new file implementing [`Integration`] and one
//! line in [`Registry::standard`]; the store, the API and the worker need no change.

pub mod email;
mod http;
pub mod limits;
pub mod pace;
pub mod retry;
pub mod slack;
pub mod sms;
pub mod telegram;
pub mod template;
pub mod webhook;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::Settings;
use crate::domain::{ChannelSettings, WebhookPayload};
use crate::outbound::Guard;
use crate::templating::Texts;

pub use worker::Dispatcher;

pub use crate::domain::Reason;

/// A failed attempt. `detail` must never contain a secret (URLs are stripped).
#[derive(Clone, Debug)]
pub struct SendError {
    pub reason: Reason,
    pub retryable: bool,
    /// The destination's own hint (`Retry-After`, Telegram's `retry_after`).
    pub retry_after: Option<Duration>,
    pub status: Option<u16>,
    pub detail: String,
}

impl SendError {
    pub fn permanent(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            retryable: false,
            retry_after: None,
            status: None,
            detail: detail.into(),
        }
    }
}

/// A successful attempt.
#[derive(Clone, Debug, Default)]
pub struct Sent {
    pub status: Option<u16>,
    /// SMS segments used, where the integration counts them.
    pub segments: Option<i64>,
}

/// What an integration gets to send with: the shared HTTP client (which
/// resolves and redirects through the outbound guard) and global settings.
pub struct SendContext {
    pub http: reqwest::Client,
    pub settings: Arc<Settings>,
    pub guard: Guard,
    /// Whether requests go through `outbound_proxy`: the proxy resolves
    /// names, so the guard resolves and checks them before sending.
    proxied: bool,
}

impl SendContext {
    pub fn new(settings: Arc<Settings>) -> anyhow::Result<Self> {
        let guard = Guard::new(settings.outbound_allow.clone());
        let proxied = settings.outbound_proxy.is_some();
        let builder = reqwest::Client::builder()
            .user_agent(concat!("notimeter/", env!("CARGO_PKG_VERSION")))
            .timeout(settings.dispatch.send_timeout)
            .redirect(guard.redirect_policy(proxied));
        // Proxies come from notimeter's configuration only, never from
        // HTTP_PROXY and the like: those would bypass the guard. Through a
        // proxy, our resolver only ever sees the proxy's name (the operator's,
        // allowed even if private), so it is not guarded.
        let builder = match &settings.outbound_proxy {
            Some(proxy) => builder.proxy(
                reqwest::Proxy::all(proxy.expose())
                    .map_err(|e| anyhow::anyhow!("outbound_proxy: {}", e.without_url()))?,
            ),
            None => builder.no_proxy().dns_resolver(Arc::new(guard.clone())),
        };
        Ok(Self {
            http: builder.build()?,
            settings,
            guard,
            proxied,
        })
    }

    /// Checks a user-supplied URL again at send time; through a proxy, also
    /// what its name resolves to now (every answer must be allowed).
    pub async fn checked_url(&self, raw: &str) -> Result<url::Url, SendError> {
        let url = self.guard.check_url(raw).map_err(|e| {
            SendError::permanent(Reason::ClientError, format!("outbound guard: {e}"))
        })?;
        if self.proxied {
            match self.guard.check_name(&url).await {
                Ok(Ok(())) => {}
                Ok(Err(refused)) => {
                    return Err(SendError::permanent(
                        Reason::ClientError,
                        refused.to_string(),
                    ))
                }
                Err(e) => {
                    return Err(SendError {
                        reason: Reason::Other,
                        retryable: true,
                        retry_after: None,
                        status: None,
                        detail: format!("resolving the URL's host failed: {e}"),
                    })
                }
            }
        }
        Ok(url)
    }
}

/// Settings checks that need the operator's configuration (outbound guard).
pub struct ValidateContext<'a> {
    pub settings: &'a Settings,
    pub guard: &'a Guard,
}

impl ValidateContext<'_> {
    /// Checks a user-supplied URL setting, naming it in the error.
    pub fn url(&self, field: &str, raw: &str) -> Result<(), String> {
        self.guard
            .check_url(raw)
            .map(drop)
            .map_err(|e| format!("settings.{field}: {e}"))
    }
}

/// One integration: how its channels' settings are checked with the
/// operator's configuration, which destination it paces, and how it sends.
#[async_trait]
pub trait Integration: Send + Sync {
    /// Its channels' settings, parsed (see `domain::settings`).
    type Settings: Send + Sync;

    /// Checks a channel's settings against the operator's configuration when
    /// it is saved (the outbound guard, a configured SMTP server, …).
    fn validate(
        &self,
        _settings: &Self::Settings,
        _ctx: &ValidateContext<'_>,
    ) -> Result<(), String> {
        Ok(())
    }

    /// The destination sends are paced per (`dispatch.pace`), if any: e.g. one
    /// Slack webhook, one Telegram chat. Hashed, so no secret is kept in it.
    fn destination(&self, _settings: &Self::Settings) -> Option<String> {
        None
    }

    /// Sends one message: `payload`, its texts as the channel's templates
    /// gave them (a field without one keeps the integration's default).
    async fn send(
        &self,
        ctx: &SendContext,
        settings: &Self::Settings,
        payload: &WebhookPayload,
        texts: &Texts,
    ) -> Result<Sent, SendError>;
}

/// The integrations of this build, one of each. A channel's settings say
/// which one sends it, so none can be missing: adding an integration is a
/// variant of `ChannelSettings`, a file here, and the arms the compiler asks for.
#[derive(Clone)]
pub struct Registry(Arc<Integrations>);

struct Integrations {
    email: email::Email,
    slack: slack::Slack,
    sms: sms::Sms,
    telegram: telegram::Telegram,
    webhook: webhook::Webhook,
}

/// Runs `$body` with `$i` the integration and `$s` the typed settings of `$settings`.
macro_rules! with_integration {
    ($registry:expr, $settings:expr, |$i:ident, $s:ident| $body:expr) => {{
        let all = &$registry.0;
        match $settings {
            ChannelSettings::Email($s) => {
                let $i = &all.email;
                $body
            }
            ChannelSettings::Slack($s) => {
                let $i = &all.slack;
                $body
            }
            ChannelSettings::Sms($s) => {
                let $i = &all.sms;
                $body
            }
            ChannelSettings::Telegram($s) => {
                let $i = &all.telegram;
                $body
            }
            ChannelSettings::Webhook($s) => {
                let $i = &all.webhook;
                $body
            }
        }
    }};
}

impl Registry {
    /// Every integration of this build; global settings configure email and SMS.
    pub fn standard(settings: &Settings) -> Self {
        Self(Arc::new(Integrations {
            email: email::Email::new(&settings.smtp, settings.dispatch.send_timeout),
            slack: slack::Slack,
            sms: sms::Sms,
            telegram: telegram::Telegram,
            webhook: webhook::Webhook,
        }))
    }

    pub fn validate(
        &self,
        settings: &ChannelSettings,
        ctx: &ValidateContext<'_>,
    ) -> Result<(), String> {
        with_integration!(self, settings, |i, s| i.validate(s, ctx))
    }

    pub fn destination(&self, settings: &ChannelSettings) -> Option<String> {
        with_integration!(self, settings, |i, s| i.destination(s))
    }

    pub async fn send(
        &self,
        ctx: &SendContext,
        settings: &ChannelSettings,
        payload: &WebhookPayload,
        texts: &Texts,
    ) -> Result<Sent, SendError> {
        with_integration!(self, settings, |i, s| i.send(ctx, s, payload, texts).await)
    }
}

/// A stable, non-reversible key for a destination built from secret parts.
pub fn destination_key(integration: &str, parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    format!("{integration}:{}", hex::encode(&h.finalize()[..12]))
}

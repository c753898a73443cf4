//! Delivery: one file per integration, a retry policy, and the worker pool that
//! works off the outbox.
//!
//! Adding an integration is one new file implementing [`Integration`] and one
//! line in [`Registry::standard`]; the store, the API and the worker need no change.

pub mod email;
pub mod guard;
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

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::Settings;
use crate::domain::WebhookPayload;

pub use worker::Dispatcher;

/// Why an attempt failed, in Alertmanager's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    ClientError,
    ServerError,
    RateLimited,
    AuthError,
    ContextDeadlineExceeded,
    Other,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::ClientError,
        Reason::ServerError,
        Reason::RateLimited,
        Reason::AuthError,
        Reason::ContextDeadlineExceeded,
        Reason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ClientError => "clientError",
            Reason::ServerError => "serverError",
            Reason::RateLimited => "rateLimited",
            Reason::AuthError => "authError",
            Reason::ContextDeadlineExceeded => "contextDeadlineExceeded",
            Reason::Other => "other",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    pub guard: guard::Guard,
    /// Whether requests go through `outbound_proxy`: the proxy resolves
    /// names, so the guard resolves and checks them before sending.
    proxied: bool,
}

impl SendContext {
    pub fn new(settings: Arc<Settings>) -> anyhow::Result<Self> {
        let guard = guard::Guard::new(settings.outbound_allow.clone());
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
    pub guard: &'a guard::Guard,
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

#[async_trait]
pub trait Integration: Send + Sync {
    /// The `integration` label, as Alertmanager names it.
    fn name(&self) -> &'static str;
    /// Dotted paths of the settings that are secrets, shown as `"<secret>"`.
    fn secret_fields(&self) -> &'static [&'static str];
    /// Checks a channel's settings when it is saved.
    fn validate(&self, settings: &Value, ctx: &ValidateContext<'_>) -> Result<(), String>;
    /// The destination sends are paced per (`dispatch.pace`), if any: e.g. one
    /// Slack webhook, one Telegram chat. Hashed, so no secret is kept in it.
    fn destination(&self, _settings: &Value) -> Option<String> {
        None
    }

    /// Sends one message.
    async fn send(
        &self,
        ctx: &SendContext,
        settings: &Value,
        payload: &WebhookPayload,
    ) -> Result<Sent, SendError>;
}

/// The integrations this build knows, by name.
#[derive(Clone)]
pub struct Registry {
    by_name: BTreeMap<&'static str, Arc<dyn Integration>>,
}

impl Registry {
    /// Every integration of this build; global settings configure email and SMS.
    pub fn standard(settings: &Settings) -> Self {
        let all: Vec<Arc<dyn Integration>> = vec![
            Arc::new(webhook::Webhook),
            Arc::new(slack::Slack),
            Arc::new(telegram::Telegram),
            Arc::new(email::Email::new(
                &settings.smtp,
                settings.dispatch.send_timeout,
            )),
            Arc::new(sms::Sms),
        ];
        Self {
            by_name: all.into_iter().map(|i| (i.name(), i)).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Integration>> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + Clone + '_ {
        self.by_name.keys().copied()
    }
}

/// Deserialises an integration's settings, saying which field is wrong.
pub fn parse_settings<T: DeserializeOwned>(settings: &Value) -> Result<T, String> {
    T::deserialize(settings).map_err(|e| format!("settings: {e}"))
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

/// Replaces the secret fields of `settings` with `"<secret>"`.
pub fn redact(settings: &mut Value, secret_fields: &[&str]) {
    for path in secret_fields {
        let mut node = &mut *settings;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let Some(next) = node.get_mut(part) else {
                break;
            };
            if parts.peek().is_none() {
                if !next.is_null() {
                    *next = Value::String(crate::api::SECRET_PLACEHOLDER.into());
                }
                break;
            }
            node = next;
        }
    }
}

/// For a PUT that sends `"<secret>"` back (as GET showed it), keep the stored value.
pub fn restore_secrets(settings: &mut Value, previous: &Value, secret_fields: &[&str]) {
    for path in secret_fields {
        let pointer = format!("/{}", path.replace('.', "/"));
        let placeholder = settings
            .pointer(&pointer)
            .and_then(Value::as_str)
            .is_some_and(|s| s == crate::api::SECRET_PLACEHOLDER);
        if placeholder {
            if let (Some(old), Some(slot)) =
                (previous.pointer(&pointer), settings.pointer_mut(&pointer))
            {
                *slot = old.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redact_and_restore() {
        let original =
            json!({"url": "https://x/secret", "basic_auth": {"username": "u", "password": "p"}});
        let mut shown = original.clone();
        redact(&mut shown, &["url", "basic_auth.password", "bearer_token"]);
        assert_eq!(
            shown,
            json!({"url": "<secret>", "basic_auth": {"username": "u", "password": "<secret>"}})
        );
        restore_secrets(&mut shown, &original, &["url", "basic_auth.password"]);
        assert_eq!(shown, original);
    }
}

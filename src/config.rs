//! Settings: a TOML file (`--config`) overridden by `NOTIMETER_*` variables
//! (nested keys joined with `__`). Unknown keys are errors that name the key.
//! Values are parsed into their types here, once, when the settings load:
//! integrations (`IntegrationKind` keys), prices (`Decimal`), the billing
//! schedule (`cron::Schedule`) and time zone (`Tz`); what does not parse is
//! refused then, by every verb, and nothing downstream re-validates it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use ipnet::IpNet;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::IntegrationKind;

/// Tokens and passwords in the settings: shown as `<secret>` wherever printed.
pub use crate::domain::Secret;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database_url: String,
    pub reports_dir: PathBuf,
    pub ingest_token: Option<Secret>,
    pub admin_token: Option<Secret>,
    pub finance_token: Option<Secret>,
    pub metrics_token: Option<Secret>,
    pub allow_insecure: bool,
    pub outbound_allow: Vec<IpNet>,
    /// The HTTP proxy deliveries go through (`http://host:port`, optionally
    /// with `user:password@`). Never taken from `HTTP_PROXY` and the like.
    pub outbound_proxy: Option<Secret>,
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    pub max_user_series: usize,
    /// Largest webhook body accepted, in bytes (413 above it).
    pub max_request_bytes: usize,
    /// Webhook requests read and handled at once. Concurrent requests share
    /// one commit (group commit), so this is also how many can.
    pub max_concurrent_ingests: usize,
    /// Webhook bodies handled at once, in bytes, by their `Content-Length`
    /// (one without takes `max_request_bytes`). Each holds its body and its
    /// parsed alerts (about 16 MB for a 1 MiB payload of 20,000 alerts), so
    /// this bounds ingest memory: many small notifications at once, few
    /// large ones. Further requests wait, before their body is read.
    pub max_ingest_bytes: usize,
    /// How long a webhook request waits for its turn before it is answered 503
    /// with `Retry-After` (Alertmanager retries it).
    #[serde(with = "humantime_serde")]
    pub ingest_queue_timeout: Duration,
    /// Time a client has to send a request's head (line and headers): from
    /// the connection's opening, or on a kept-alive connection from the first
    /// byte of the next request. The connection is closed after it.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a request's whole body has to arrive, from its head (408 after it).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request, and how
    /// long a response may wait for a client that does not read it, before the
    /// connection is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most client connections open at once. A new one beyond it closes the
    /// connection idle the longest (or, when every one is busy, is refused).
    pub max_connections: usize,
    /// How long a request waits for the store before it answers 503 with
    /// `Retry-After` (ingest, readiness).
    #[serde(with = "humantime_serde")]
    pub store_timeout: Duration,
    /// How long shutdown may take in all: in-flight sends get most of it,
    /// then what did not finish is released and the process exits, whatever
    /// state the store is in.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    pub dispatch: DispatchSettings,
    pub limits: LimitSettings,
    pub smtp: SmtpSettings,
    pub sms: SmsSettings,
    pub billing: BillingSettings,
    pub retention: RetentionSettings,
    pub render: RenderSettings,
    pub page: PageSettings,
    pub consul: ConsulSettings,
    pub reconcile: ReconcileSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9097)),
            database_url: "sqlite://notimeter.db".into(),
            reports_dir: PathBuf::from("reports"),
            ingest_token: None,
            admin_token: None,
            finance_token: None,
            metrics_token: None,
            allow_insecure: false,
            outbound_allow: Vec::new(),
            outbound_proxy: None,
            dedupe_window: Duration::from_secs(30),
            max_user_series: 10_000,
            max_request_bytes: 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_concurrent_ingests: 64,
            max_ingest_bytes: 2 * 1024 * 1024,
            ingest_queue_timeout: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(10),
            store_timeout: Duration::from_millis(1500),
            log_format: LogFormat::Plain,
            dispatch: DispatchSettings::default(),
            limits: LimitSettings::default(),
            smtp: SmtpSettings::default(),
            sms: SmsSettings::default(),
            billing: BillingSettings::default(),
            retention: RetentionSettings::default(),
            render: RenderSettings::default(),
            page: PageSettings::default(),
            consul: ConsulSettings::default(),
            reconcile: ReconcileSettings::default(),
        }
    }
}

/// How the outbox is worked off. Not in DESIGN.md's table: notimeter's own choice,
/// documented in the README.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchSettings {
    /// Concurrent sends per process.
    pub workers: usize,
    /// Messages claimed per round trip to the store.
    pub batch_size: usize,
    /// How long a claim holds a message; a crashed holder's messages are taken
    /// again after it. Must exceed `send_timeout`.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Attempts before a retryable failure becomes final.
    pub max_attempts: u32,
    /// Age (since accepted) after which a retryable failure becomes final.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Upper bound on a `Retry-After` hint that is honoured.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// How often idle workers look for due retries.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Most sends in flight to one destination (a webhook URL, a Slack webhook,
    /// a Telegram chat): a slow receiver holds at most this many workers.
    pub max_in_flight_per_destination: usize,
    /// Least time between two sends to one destination (a Slack webhook, a
    /// Telegram chat), by integration. Other destinations are not held back.
    #[serde(deserialize_with = "by_integration::deserialize")]
    pub pace: BTreeMap<IntegrationKind, humantime_serde::Serde<Duration>>,
}

impl DispatchSettings {
    pub fn pace_for(&self, integration: IntegrationKind) -> Duration {
        self.pace
            .get(&integration)
            .map(|d| **d)
            .unwrap_or(Duration::ZERO)
    }
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            workers: 64,
            batch_size: 64,
            lease: Duration::from_secs(60),
            send_timeout: Duration::from_secs(10),
            max_attempts: 10,
            max_age: Duration::from_secs(3600),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_retry_after: Duration::from_secs(600),
            poll_interval: Duration::from_millis(500),
            max_in_flight_per_destination: 8,
            pace: [IntegrationKind::Slack, IntegrationKind::Telegram]
                .into_iter()
                .map(|k| (k, Duration::from_secs(1).into()))
                .collect(),
        }
    }
}

/// Per-user plan limits, like Grafana Mimir's per-tenant notification rate
/// limits: at most N messages per `interval` for a user and integration. A
/// message over its limit fails with reason rateLimited and is never sent.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Limits for every user, by integration (absent: unlimited).
    #[serde(deserialize_with = "by_integration::deserialize")]
    pub default: BTreeMap<IntegrationKind, u32>,
    /// Per-user overrides, by user_id then integration.
    #[serde(deserialize_with = "by_integration::deserialize_per_user")]
    pub users: BTreeMap<String, BTreeMap<IntegrationKind, u32>>,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(3600),
            default: BTreeMap::new(),
            users: BTreeMap::new(),
        }
    }
}

impl LimitSettings {
    pub fn limit(&self, user_id: &str, integration: IntegrationKind) -> Option<u32> {
        self.users
            .get(user_id)
            .and_then(|m| m.get(&integration))
            .or_else(|| self.default.get(&integration))
            .copied()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    #[default]
    Starttls,
    Tls,
    None,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSettings {
    pub smarthost: Option<String>,
    pub from: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: SmtpTls,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsSettings {
    pub api_url: Option<String>,
    pub account_sid: Option<String>,
    pub auth_token: Option<Secret>,
    pub from: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingSettings {
    /// When periods close: a cron expression with seconds, parsed when the
    /// settings load (`schedule.source()` is the text as written).
    #[serde(with = "cron_schedule")]
    pub schedule: cron::Schedule,
    /// The time zone the schedule is read in (IANA name); UTC when unset.
    #[serde(with = "time_zone")]
    pub timezone: Tz,
    pub currency: String,
    pub bill_failed: bool,
    /// Unit price per integration (decimal strings); missing integrations cost 0.
    #[serde(deserialize_with = "by_integration::deserialize")]
    pub prices: BTreeMap<IntegrationKind, Decimal>,
    /// Per-user overrides of `prices`, by user_id then integration.
    #[serde(deserialize_with = "by_integration::deserialize_per_user")]
    pub user_prices: BTreeMap<String, BTreeMap<IntegrationKind, Decimal>>,
    /// What an SMS bills: its segments (as gateways charge) or one message.
    pub sms_unit: SmsUnit,
}

/// What one SMS bills (DESIGN.md "Billing units").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmsUnit {
    /// The segments it was sent in (a long or non-GSM text takes several).
    #[default]
    Segment,
    /// One message, whatever its length.
    Message,
}

impl SmsUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            SmsUnit::Segment => "segment",
            SmsUnit::Message => "message",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "segment" => Some(SmsUnit::Segment),
            "message" => Some(SmsUnit::Message),
            _ => None,
        }
    }
}

impl Default for BillingSettings {
    fn default() -> Self {
        Self {
            schedule: "0 0 0 1 * *"
                .parse()
                .expect("the default schedule is a cron expression"),
            timezone: chrono_tz::UTC,
            currency: "USD".into(),
            bill_failed: false,
            prices: BTreeMap::new(),
            user_prices: BTreeMap::new(),
            sms_unit: SmsUnit::Segment,
        }
    }
}

impl BillingSettings {
    /// The price of one message of `integration` for any user without an override.
    pub fn unit_price(&self, integration: IntegrationKind) -> Decimal {
        self.prices
            .get(&integration)
            .copied()
            .unwrap_or(Decimal::ZERO)
    }

    /// The price of one message of `integration` for `user_id`.
    pub fn unit_price_for(&self, user_id: &str, integration: IntegrationKind) -> Decimal {
        self.user_prices
            .get(user_id)
            .and_then(|p| p.get(&integration))
            .copied()
            .unwrap_or_else(|| self.unit_price(integration))
    }
}

/// The maps keyed by integration (`dispatch.pace`, `limits.*`,
/// `billing.prices`, `billing.user_prices.*`). Keys are read through
/// `IntegrationKind`'s `FromStr`, so an unknown one is refused, when the
/// settings load, with the known ones listed (figment adds the key's path).
mod by_integration {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer};

    use crate::domain::IntegrationKind;

    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct Key(IntegrationKind);

    impl<'de> Deserialize<'de> for Key {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let name = String::deserialize(d)?;
            match name.parse() {
                Ok(kind) => Ok(Key(kind)),
                Err(_) => Err(serde::de::Error::custom(format!(
                    "unknown integration {name:?} (known: {})",
                    IntegrationKind::known()
                ))),
            }
        }
    }

    struct ByKind<V>(BTreeMap<IntegrationKind, V>);

    impl<'de, V: Deserialize<'de>> Deserialize<'de> for ByKind<V> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let map = BTreeMap::<Key, V>::deserialize(d)?;
            Ok(ByKind(map.into_iter().map(|(k, v)| (k.0, v)).collect()))
        }
    }

    pub fn deserialize<'de, D, V>(d: D) -> Result<BTreeMap<IntegrationKind, V>, D::Error>
    where
        D: Deserializer<'de>,
        V: Deserialize<'de>,
    {
        ByKind::deserialize(d).map(|m| m.0)
    }

    /// By user_id, then by integration.
    pub fn deserialize_per_user<'de, D, V>(
        d: D,
    ) -> Result<BTreeMap<String, BTreeMap<IntegrationKind, V>>, D::Error>
    where
        D: Deserializer<'de>,
        V: Deserialize<'de>,
    {
        let users = BTreeMap::<String, ByKind<V>>::deserialize(d)?;
        Ok(users.into_iter().map(|(u, m)| (u, m.0)).collect())
    }
}

/// `billing.schedule`: read from its text once, written back as that text.
mod cron_schedule {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(schedule: &cron::Schedule, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(schedule.source())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<cron::Schedule, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|e| {
            serde::de::Error::custom(format!(
                "billing.schedule {text:?} is not a cron expression with seconds: {e}"
            ))
        })
    }
}

/// `billing.timezone` and `page.timezone`: IANA names, read once, written
/// back as those names.
mod time_zone {
    use chrono_tz::Tz;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tz: &Tz, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(tz.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
        parse("billing.timezone", String::deserialize(d)?)
    }

    fn parse<E: serde::de::Error>(key: &str, name: String) -> Result<Tz, E> {
        name.parse().map_err(|_| {
            E::custom(format!(
                "{key} {name:?} is not an IANA time zone such as Europe/Berlin"
            ))
        })
    }

    /// `page.timezone`: unset, or an IANA name.
    pub mod optional {
        use chrono_tz::Tz;
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(tz: &Option<Tz>, s: S) -> Result<S::Ok, S::Error> {
            match tz {
                Some(tz) => super::serialize(tz, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Tz>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|name| super::parse("page.timezone", name))
                .transpose()
        }
    }
}

/// How long delivery details are kept once their period has closed. Ledger
/// rows and reports are never pruned.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Message payloads and attempts older than this (by final time), in
    /// closed periods, are pruned. The message rows (the itemized ledger) stay.
    #[serde(with = "humantime_serde")]
    pub messages: Duration,
    /// How often pruning runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            messages: Duration::from_secs(90 * 86_400),
            interval: Duration::from_secs(3600),
        }
    }
}

/// Consul KV as a live source of channels (the original setup's layout,
/// `<prefix><user_id>/alarms/<type>/<alarm_id>/<field>`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsulSettings {
    /// Consul's HTTP API, e.g. `http://127.0.0.1:8500`. Unset: no watch.
    pub address: Option<String>,
    /// An ACL token with read access to the prefix (`X-Consul-Token`).
    pub token: Option<Secret>,
    /// A file holding the token (read at start; its surrounding whitespace
    /// is trimmed), instead of `token`.
    pub token_file: Option<PathBuf>,
    /// The KV prefix the users live under.
    pub prefix: String,
    /// The datacenter to read from (`?dc=`); Consul's own by default.
    pub datacenter: Option<String>,
    /// A sync that would delete more than this share of the Consul channels
    /// at once changes nothing (Consul answering empty is not "delete all").
    pub max_delete_share: f64,
    /// How long one blocking query may wait for a change (Consul caps it at 10m).
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// The longest pause between retries after an error (they back off from 1s).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for ConsulSettings {
    fn default() -> Self {
        Self {
            address: None,
            token: None,
            token_file: None,
            prefix: "users/".into(),
            datacenter: None,
            max_delete_share: 0.5,
            wait: Duration::from_secs(300),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl ConsulSettings {
    /// The token, from `token` or `token_file`.
    pub fn token(&self) -> Result<Option<Secret>, String> {
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => {
                Err("consul.token and consul.token_file are mutually exclusive".into())
            }
            (Some(t), None) => Ok(Some(t.clone())),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|t| Some(Secret::new(t.trim())))
                .map_err(|e| format!("consul.token_file {}: {e}", path.display())),
            (None, None) => Ok(None),
        }
    }
}

/// Reconciliation with Alertmanager: what the Alertmanagers say they sent to
/// webhooks, compared with what notimeter received (see `reconcile.rs`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileSettings {
    /// Each Alertmanager's base URL (its `/metrics` is scraped), e.g. every
    /// member of an HA cluster. Empty: no reconciliation.
    pub alertmanager_urls: Vec<String>,
    /// How often they are scraped (and notimeter's own count is stored).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long one scrape may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            alertmanager_urls: Vec::new(),
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

impl ReconcileSettings {
    fn validate(&self) -> Result<(), String> {
        for u in &self.alertmanager_urls {
            let scheme = url::Url::parse(u).map(|u| u.scheme().to_owned());
            if !matches!(scheme.as_deref(), Ok("http" | "https")) {
                return Err(format!(
                    "reconcile.alertmanager_urls: {u:?} is not a URL such as http://alertmanager:9093"
                ));
            }
        }
        let mut unique = self.alertmanager_urls.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != self.alertmanager_urls.len() {
            return Err("reconcile.alertmanager_urls names an Alertmanager twice".into());
        }
        if self.interval < Duration::from_millis(100) || self.timeout.is_zero() {
            return Err(
                "reconcile.interval must be at least 100ms and reconcile.timeout longer than 0s"
                    .into(),
            );
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RenderMode {
    /// One route and one receiver per enabled channel (the original shape).
    #[default]
    PerChannel,
    /// One route grouping by user_id to a single catch-all receiver;
    /// notimeter applies the channels' matchers itself.
    Compact,
}

/// Rendering Alertmanager's configuration from the channels store.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenderSettings {
    /// The operator's file: global, inhibit_rules, templates, time_intervals
    /// and root route settings, kept as they are. Unset: a minimal root route.
    pub base_config: Option<PathBuf>,
    /// Where the rendered file goes. Unset: `serve` does not render.
    pub output: Option<PathBuf>,
    /// Alertmanager to reload (`POST /-/reload`) and confirm through `/metrics`.
    pub alertmanager_url: Option<String>,
    /// How Alertmanager reaches notimeter; receivers post to `<public_url>/v1/alertmanager`.
    pub public_url: String,
    /// A file Alertmanager reads the ingest token from (never inline).
    pub credentials_file: Option<PathBuf>,
    pub mode: RenderMode,
    /// The amtool used to check a candidate; found on PATH by default, "" to skip.
    pub amtool: String,
    /// Refuse to publish a result with this share fewer channels than the current file, unless --force.
    pub max_shrink: f64,
    /// In `serve`: wait this long after a channel change, so a burst gives one render.
    #[serde(with = "humantime_serde")]
    pub debounce: Duration,
    /// In `serve`: render again this often (changes made through another replica).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long to wait for Alertmanager to confirm a reload.
    #[serde(with = "humantime_serde")]
    pub reload_timeout: Duration,
}

impl Default for RenderSettings {
    fn default() -> Self {
        Self {
            base_config: None,
            output: None,
            alertmanager_url: None,
            public_url: "http://127.0.0.1:9097".into(),
            credentials_file: None,
            mode: RenderMode::PerChannel,
            amtool: "amtool".into(),
            max_shrink: 0.5,
            debounce: Duration::from_secs(2),
            interval: Duration::from_secs(60),
            reload_timeout: Duration::from_secs(10),
        }
    }
}

/// The finance page's sign-in: sessions and the throttle on wrong tokens.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PageSettings {
    /// How long a sign-in lasts; the session is refused after it.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Mark the session cookie `Secure`. Unset: when `render.public_url` is https.
    pub cookie_secure: Option<bool>,
    /// Wrong tokens a client address may send to `/login` per `login_window`;
    /// beyond it, `/login` answers 429 until the window has passed.
    pub login_failures: u32,
    #[serde(with = "humantime_serde")]
    pub login_window: Duration,
    /// The time zone the page shows dates in and names periods by (IANA
    /// name). Unset: `billing.timezone`'s; see [`Settings::page_timezone`].
    #[serde(with = "time_zone::optional")]
    pub timezone: Option<Tz>,
}

impl Default for PageSettings {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 3600),
            cookie_secure: None,
            login_failures: 5,
            login_window: Duration::from_secs(60),
            timezone: None,
        }
    }
}

/// Environment variables under `NOTIMETER_` that are not settings.
const RESERVED_ENV: &[&str] = &["config", "test_"];

/// Why a render is refused when its receivers could not authenticate.
pub const UNAUTHENTICATED_RENDER: &str =
    "ingest_token is set but render.credentials_file is not: Alertmanager would post without the \
     token and notimeter would refuse every notification (401). Put the ingest token in a file \
     Alertmanager can read and set render.credentials_file (NOTIMETER_RENDER__CREDENTIALS_FILE) to \
     its path as Alertmanager sees it";

impl Settings {
    /// Defaults, then the TOML file (if any), then `NOTIMETER_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "config file {} does not exist",
                    path.display()
                ))));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(
            Env::prefixed("NOTIMETER_")
                .filter(|key| {
                    let key = key.as_str().to_ascii_lowercase();
                    !RESERVED_ENV.iter().any(|r| key.starts_with(r))
                })
                .split("__"),
        );
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings
            .validate()
            .map_err(|e| Box::new(figment::Error::from(e)))?;
        Ok(settings)
    }

    /// Whether a rendered Alertmanager configuration would post without the
    /// ingest token that ingest requires.
    pub fn render_is_unauthenticated(&self) -> bool {
        self.ingest_token.is_some() && self.render.credentials_file.is_none()
    }

    fn validate(&self) -> Result<(), String> {
        let d = &self.dispatch;
        if d.workers == 0 || d.batch_size == 0 || d.max_in_flight_per_destination == 0 {
            return Err(
                "dispatch.workers, dispatch.batch_size and dispatch.max_in_flight_per_destination must be at least 1"
                    .into(),
            );
        }
        if d.lease <= d.send_timeout {
            return Err(format!(
                "dispatch.lease ({:?}) must be longer than dispatch.send_timeout ({:?})",
                d.lease, d.send_timeout
            ));
        }
        if d.max_attempts == 0 {
            return Err("dispatch.max_attempts must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.render.max_shrink) {
            return Err("render.max_shrink is a share between 0 and 1".into());
        }
        if !(0.0..=1.0).contains(&self.consul.max_delete_share) {
            return Err("consul.max_delete_share is a share between 0 and 1".into());
        }
        if self.consul.wait.is_zero() || self.consul.wait > Duration::from_secs(600) {
            return Err("consul.wait is a duration between 1s and 10m (Consul's limit)".into());
        }
        if !self.consul.prefix.is_empty() && !self.consul.prefix.ends_with('/') {
            return Err(format!(
                "consul.prefix {:?} must end with '/' (a folder, like \"users/\")",
                self.consul.prefix
            ));
        }
        self.reconcile.validate()?;
        if self.retention.interval.is_zero() {
            return Err("retention.interval must be longer than 0s".into());
        }
        if self.limits.interval.is_zero() {
            return Err("limits.interval must be longer than 0s".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if [
            self.header_read_timeout,
            self.body_read_timeout,
            self.idle_timeout,
        ]
        .iter()
        .any(Duration::is_zero)
        {
            return Err(
                "header_read_timeout, body_read_timeout and idle_timeout must be longer than 0s"
                    .into(),
            );
        }
        if let Some(proxy) = &self.outbound_proxy {
            let scheme = url::Url::parse(proxy.expose()).map(|u| u.scheme().to_owned());
            if !matches!(scheme.as_deref(), Ok("http" | "https")) {
                return Err("outbound_proxy must be a URL such as http://proxy:3128".into());
            }
        }
        if self.max_user_series == 0 {
            return Err("max_user_series must be at least 1".into());
        }
        if self.page.session_ttl < Duration::from_secs(1) {
            return Err("page.session_ttl must be at least 1s".into());
        }
        if self.page.login_failures == 0 || self.page.login_window.is_zero() {
            return Err(
                "page.login_failures must be at least 1 and page.login_window longer than 0s"
                    .into(),
            );
        }
        if self.max_concurrent_ingests == 0 {
            return Err("max_concurrent_ingests must be at least 1".into());
        }
        if self.max_ingest_bytes < self.max_request_bytes {
            return Err(format!(
                "max_ingest_bytes ({}) must be at least max_request_bytes ({})",
                self.max_ingest_bytes, self.max_request_bytes
            ));
        }
        Ok(())
    }

    /// The zone the finance page shows times in: `page.timezone`, else the
    /// billing schedule's.
    pub fn page_timezone(&self) -> Tz {
        self.page.timezone.unwrap_or(self.billing.timezone)
    }

    /// True when some role has no token and would be open to anyone who can connect.
    pub fn has_open_role(&self) -> bool {
        self.ingest_token.is_none() || self.admin_token.is_none() || self.finance_token.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let s = Settings {
            admin_token: Some(Secret::new("hunter2")),
            ..Settings::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\n[billing]\ncurency = \"EUR\"\n",
        )
        .unwrap();
        let err = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("curency"), "{err}");
    }

    #[test]
    fn file_values_and_durations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "dedupe_window = \"5s\"\noutbound_allow = [\"127.0.0.0/8\"]\n[billing.prices]\nslack = \"0.010\"\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.dedupe_window, Duration::from_secs(5));
        assert_eq!(s.outbound_allow.len(), 1);
        assert_eq!(
            s.billing.unit_price(IntegrationKind::Slack).to_string(),
            "0.010"
        );
        assert_eq!(s.billing.unit_price(IntegrationKind::Sms), Decimal::ZERO);
    }

    /// Loads `toml` as the settings file.
    fn load(toml: &str) -> Result<Settings, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        Settings::load(Some(&path)).map_err(|e| e.to_string())
    }

    #[test]
    fn integration_keys_are_typed() {
        let s = load(
            "[dispatch.pace]\nslack = \"0s\"\nwebhook = \"2s\"\n\
             [limits.default]\nsms = 2\n[limits.users.vip]\nsms = 10\n\
             [billing.prices]\nslack = \"0.010\"\n[billing.user_prices.c1]\nsms = \"3\"\n",
        )
        .unwrap();
        use IntegrationKind::{Email, Slack, Sms, Telegram, Webhook};
        assert_eq!(s.dispatch.pace_for(Slack), Duration::ZERO);
        assert_eq!(s.dispatch.pace_for(Webhook), Duration::from_secs(2));
        // Merged with the defaults, key by key.
        assert_eq!(s.dispatch.pace_for(Telegram), Duration::from_secs(1));
        assert_eq!(s.dispatch.pace_for(Email), Duration::ZERO);
        assert_eq!(s.limits.limit("u1", Sms), Some(2));
        assert_eq!(s.limits.limit("vip", Sms), Some(10));
        assert_eq!(s.limits.limit("vip", Slack), None);
        assert_eq!(s.billing.unit_price_for("c1", Sms).to_string(), "3");
        assert_eq!(s.billing.unit_price_for("c1", Slack).to_string(), "0.010");
        assert_eq!(s.billing.unit_price_for("u1", Sms), Decimal::ZERO);
    }

    #[test]
    fn an_unknown_integration_is_refused_wherever_it_is_a_key() {
        for (toml, key) in [
            ("[dispatch.pace]\nsmz = \"1s\"\n", "dispatch.pace.smz"),
            ("[limits.default]\nsmz = 1\n", "limits.default.smz"),
            ("[limits.users.u1]\nsmz = 1\n", "limits.users.u1.smz"),
            ("[billing.prices]\nsmz = \"3\"\n", "billing.prices.smz"),
            (
                "[billing.user_prices.\"c1\"]\nsmz = \"3\"\n",
                "billing.user_prices.c1.smz",
            ),
            // Names are lower case, as Alertmanager writes them.
            ("[billing.prices]\nSlack = \"3\"\n", "billing.prices.Slack"),
        ] {
            let err = load(toml).unwrap_err();
            let name = key.rsplit('.').next().unwrap();
            assert!(
                err.contains(&format!("unknown integration \"{name}\"")),
                "{toml}: {err}"
            );
            assert!(err.contains(&format!("{key}\"")), "{toml}: {err}");
            assert!(
                err.contains("email, slack, sms, telegram, webhook"),
                "{toml}: {err}"
            );
        }
    }

    #[test]
    fn schedule_and_time_zone_are_parsed_when_loaded() {
        let s = Settings::default();
        assert_eq!(s.billing.schedule.source(), "0 0 0 1 * *");
        assert_eq!(s.billing.timezone, chrono_tz::UTC);
        let s =
            load("[billing]\nschedule = \"0 0 * * * *\"\ntimezone = \"Europe/Berlin\"\n").unwrap();
        assert_eq!(s.billing.schedule.source(), "0 0 * * * *");
        assert_eq!(s.billing.timezone, chrono_tz::Europe::Berlin);

        let err = load("[billing]\nschedule = \"0 0 1 * *\"\n").unwrap_err();
        assert!(
            err.contains("billing.schedule \"0 0 1 * *\" is not a cron expression with seconds"),
            "{err}"
        );
        assert_eq!(
            s.page_timezone(),
            chrono_tz::Europe::Berlin,
            "the page follows billing"
        );
        let s = load(
            "[billing]\ntimezone = \"Europe/Berlin\"\n[page]\ntimezone = \"America/New_York\"\n",
        )
        .unwrap();
        assert_eq!(s.page_timezone(), chrono_tz::America::New_York);
        assert_eq!(
            serde_json::to_value(&s).unwrap()["page"]["timezone"],
            "America/New_York"
        );
        let err = load("[page]\ntimezone = \"Mars/Olympus\"\n").unwrap_err();
        assert!(
            err.contains("page.timezone \"Mars/Olympus\" is not an IANA time zone"),
            "{err}"
        );
        let err = load("[billing]\ntimezone = \"Mars/Olympus\"\n").unwrap_err();
        assert!(
            err.contains(
                "billing.timezone \"Mars/Olympus\" is not an IANA time zone such as Europe/Berlin"
            ),
            "{err}"
        );
    }

    #[test]
    fn typed_settings_serialise_as_they_are_written() {
        let mut s = Settings::default();
        s.billing.timezone = chrono_tz::Europe::Berlin;
        s.billing.user_prices.insert(
            "c1".into(),
            [(IntegrationKind::Sms, Decimal::new(3, 0))].into(),
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["billing"]["schedule"], "0 0 0 1 * *");
        assert_eq!(v["billing"]["timezone"], "Europe/Berlin");
        assert_eq!(v["billing"]["user_prices"]["c1"]["sms"], "3");
        assert_eq!(v["dispatch"]["pace"]["slack"], "1s");
    }

    #[test]
    fn outbound_proxy_is_a_url() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "outbound_proxy = \"http://u:p@proxy:3128\"\n").unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(
            s.outbound_proxy.as_ref().map(Secret::expose),
            Some("http://u:p@proxy:3128")
        );
        assert_eq!(format!("{:?}", s.outbound_proxy), "Some(<secret>)");
        std::fs::write(&path, "outbound_proxy = \"proxy:3128\"\n").unwrap();
        let err = Settings::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("outbound_proxy"), "{err}");
    }
}

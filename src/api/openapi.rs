//! `GET /openapi.json`: the OpenAPI 3.1 description of every route, generated
//! by `utoipa` from the `#[utoipa::path]` attribute on each handler and the
//! schemas below. Bodies the handlers build as JSON values are described by
//! the `*Doc` types here; `tests/api/openapi.rs` checks real answers against
//! them (and the whole document with a validator), so they cannot drift.

#![allow(dead_code)] // the Doc types are read by utoipa, never built

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::domain::ChannelSpec;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "notimeter",
        description = "Between Prometheus Alertmanager and the channels customers are notified on: \
                       delivers, meters per user and bills. Roles are bearer tokens; the admin token \
                       may do everything. Every 4xx and 5xx has a JSON body {\"error\": \"...\"}."
    ),
    paths(
        crate::ingest::alertmanager,
        super::channels::put,
        super::channels::get,
        super::channels::delete,
        super::channels::list,
        super::test_send::test,
        super::log::user_messages,
        super::log::undeliverable,
        super::log::redeliver,
        super::usage::usage,
        super::usage::current_csv,
        super::ledger::periods,
        super::ledger::period_csv,
        super::ledger::items_csv,
        super::ledger::close,
        super::ledger::settle,
        super::page::index,
        super::page::login_form,
        super::page::login,
        super::page::logout,
        super::health::metrics,
        super::health::healthz,
        super::health::readyz,
        openapi_json,
    ),
    components(schemas(
        ErrorDoc, AlertmanagerPayloadDoc, AlertDoc, IngestDoc, ChannelSpec, ChannelDoc,
        ChannelListDoc, TestSendDoc, MessageLogDoc, MessageDoc, AttemptDoc, UndeliverableListDoc,
        UndeliverableDoc, RedeliverDoc, UsageDoc, UsageRowDoc, PeriodDoc, PeriodsDoc, CloseDoc,
        SettleDoc, HealthDoc, ReadyDoc, LoginDoc,
    )),
    modifiers(&Tokens),
    tags(
        (name = "ingest", description = "Alertmanager's webhook"),
        (name = "channels", description = "Users' channels (admin)"),
        (name = "deliveries", description = "Test sends, the delivery log, undeliverable alerts, redelivery"),
        (name = "ledger", description = "Usage, billing periods and their CSV reports (finance)"),
        (name = "page", description = "The finance page and its sign-in"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// The roles' bearer tokens.
struct Tokens;

impl Modify for Tokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (role, what) in [
            ("ingest", "ingest_token: Alertmanager's webhook"),
            ("admin", "admin_token: everything"),
            (
                "finance",
                "finance_token: usage and the ledger (reads), or a finance page session",
            ),
            ("metrics", "metrics_token: /metrics, when set"),
        ] {
            components.add_security_scheme(
                role,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(what))
                        .build(),
                ),
            );
        }
    }
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
});

/// The document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

/// An error: every 4xx and 5xx.
#[derive(ToSchema)]
#[schema(as = Error)]
pub struct ErrorDoc {
    error: String,
}

/// Alertmanager's webhook payload (version 4).
#[derive(ToSchema)]
#[schema(as = AlertmanagerPayload)]
#[allow(non_snake_case)]
pub struct AlertmanagerPayloadDoc {
    version: String,
    groupKey: String,
    truncatedAlerts: Option<u64>,
    /// firing or resolved
    status: String,
    /// `notimeter/<user_id>/<channel_id>`, or any other name (alerts then go by their user_id label).
    receiver: String,
    groupLabels: BTreeMap<String, String>,
    commonLabels: BTreeMap<String, String>,
    commonAnnotations: BTreeMap<String, String>,
    externalURL: String,
    alerts: Vec<AlertDoc>,
}

/// One alert of a payload.
#[derive(ToSchema)]
#[schema(as = Alert)]
#[allow(non_snake_case)]
pub struct AlertDoc {
    status: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    startsAt: String,
    endsAt: String,
    generatorURL: String,
    fingerprint: String,
}

/// What ingest did with a payload.
#[derive(ToSchema)]
#[schema(as = IngestAnswer)]
pub struct IngestDoc {
    /// accepted, or duplicate (seen within the dedupe window: nothing stored again)
    status: String,
    alerts: Option<u64>,
    messages: Option<u64>,
    undeliverable: Option<u64>,
}

/// A channel as the API shows it: the body it was saved with (secrets as
/// `"<secret>"`), its ids, where it comes from and its times.
#[derive(ToSchema)]
#[schema(as = Channel)]
pub struct ChannelDoc {
    user_id: String,
    channel_id: String,
    /// email, slack, sms, telegram or webhook
    r#type: String,
    #[schema(value_type = Object)]
    settings: serde_json::Value,
    templates: Option<BTreeMap<String, String>>,
    matchers: Vec<String>,
    send_resolved: bool,
    enabled: bool,
    group_by: Option<Vec<String>>,
    group_wait: Option<String>,
    group_interval: Option<String>,
    repeat_interval: Option<String>,
    /// api, or consul (mirrored from Consul KV: change it there)
    source: String,
    created_at: String,
    updated_at: String,
}

#[derive(ToSchema)]
#[schema(as = ChannelList)]
pub struct ChannelListDoc {
    user_id: String,
    channels: Vec<ChannelDoc>,
}

/// The outcome of a test send.
#[derive(ToSchema)]
#[schema(as = TestSend)]
pub struct TestSendDoc {
    user_id: String,
    channel_id: String,
    integration: String,
    /// delivered or failed
    result: String,
    /// Why it failed (Alertmanager's reasons: clientError, serverError, rateLimited, ...).
    reason: Option<String>,
    status_code: Option<u16>,
    duration_ms: u64,
    error: Option<String>,
    segments: Option<i64>,
    /// Templates that failed on the test notification (their default text was sent).
    template_failures: Vec<BTreeMap<String, String>>,
}

/// A page of a user's messages, newest first.
#[derive(ToSchema)]
#[schema(as = MessageLog)]
pub struct MessageLogDoc {
    user_id: String,
    messages: Vec<MessageDoc>,
    /// `?cursor=` for the next page; null on the last.
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
#[schema(as = Message)]
pub struct MessageDoc {
    message_id: i64,
    channel_id: String,
    integration: String,
    /// pending, delivered, failed or superseded
    state: String,
    alerts: i64,
    alertnames: String,
    accepted_at: String,
    final_at: Option<String>,
    last_reason: Option<String>,
    last_error: Option<String>,
    segments: Option<i64>,
    period_id: Option<String>,
    attempts: Vec<AttemptDoc>,
}

#[derive(ToSchema)]
#[schema(as = Attempt)]
pub struct AttemptDoc {
    attempt: i64,
    started_at: String,
    duration_ms: i64,
    /// success, or a failure reason
    result: String,
    status_code: Option<i64>,
    error: Option<String>,
    segments: Option<i64>,
}

/// A page of undeliverable alerts, newest first.
#[derive(ToSchema)]
#[schema(as = UndeliverableList)]
pub struct UndeliverableListDoc {
    undeliverable: Vec<UndeliverableDoc>,
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
#[schema(as = Undeliverable)]
pub struct UndeliverableDoc {
    id: i64,
    received_at: String,
    /// `_unattributed` when the alert had no (valid) user_id label.
    user_id: String,
    /// An invalid user_id label as it came.
    raw_user_id: Option<String>,
    receiver: String,
    /// invalid_alert, invalid_receiver, user_mismatch, unknown_channel,
    /// channel_disabled, no_channel or no_matching_channel
    reason: String,
    #[schema(value_type = Object)]
    alert: serde_json::Value,
}

#[derive(ToSchema)]
#[schema(as = Redelivery)]
pub struct RedeliverDoc {
    /// The new message.
    message_id: i64,
    /// The failed message it redelivers.
    redelivers: i64,
    state: String,
}

/// The open period's usage.
#[derive(ToSchema)]
#[schema(as = Usage)]
pub struct UsageDoc {
    period_id: String,
    period_start: String,
    currency: String,
    /// The amounts' sum, rounded to the currency's minor unit.
    total: String,
    usage: Vec<UsageRowDoc>,
}

#[derive(ToSchema)]
#[schema(as = UsageRow)]
pub struct UsageRowDoc {
    user_id: String,
    integration: String,
    delivered: i64,
    failed: i64,
    /// SMS segments of those messages.
    segments: i64,
    /// What is billed (see "Billing units").
    units: i64,
    unit_price: String,
    amount: String,
}

/// A billing period or a user's statement.
#[derive(ToSchema)]
#[schema(as = Period)]
pub struct PeriodDoc {
    period_id: String,
    /// Set for a user's statement.
    user_id: Option<String>,
    /// period or statement
    kind: String,
    /// open or closed
    status: String,
    period_start: String,
    period_end: Option<String>,
    closed_at: Option<String>,
    currency: Option<String>,
    sha256: Option<String>,
    csv: String,
    items: String,
}

#[derive(ToSchema)]
#[schema(as = Periods)]
pub struct PeriodsDoc {
    periods: Vec<PeriodDoc>,
}

#[derive(ToSchema)]
#[schema(as = Close)]
pub struct CloseDoc {
    closed: PeriodDoc,
    opened: PeriodDoc,
}

#[derive(ToSchema)]
#[schema(as = Settle)]
pub struct SettleDoc {
    statement: PeriodDoc,
}

/// The sign-in form.
#[derive(ToSchema)]
#[schema(as = Login)]
pub struct LoginDoc {
    /// The finance (or admin) token.
    token: String,
}

#[derive(ToSchema)]
#[schema(as = Health)]
pub struct HealthDoc {
    status: String,
}

#[derive(ToSchema)]
#[schema(as = Ready)]
pub struct ReadyDoc {
    status: String,
    /// sqlite or postgres
    store: String,
}

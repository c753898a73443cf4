//! What goes into the store and what comes out of it: plain records, typed
//! as the columns are (booleans as `bool`, times as [`Millis`], prices as
//! [`Decimal`]). Rows are mapped by `sqlx::FromRow` on either backend.

use rust_decimal::Decimal;

use crate::clock::Millis;
use crate::domain::{AttemptResult, Channel, IntegrationKind, MessageState, UndeliverableReason};

/// Channels as listed, and those whose stored form no longer parses.
#[derive(Clone, Debug, Default)]
pub struct ChannelList {
    pub channels: Vec<Channel>,
    pub corrupt: Vec<CorruptChannel>,
}

#[derive(Clone, Debug)]
pub struct CorruptChannel {
    pub user_id: String,
    pub channel_id: String,
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct NewMessage {
    pub user_id: String,
    pub channel_id: String,
    pub integration: IntegrationKind,
    /// Alertmanager's groupKey: messages of one (channel, group) are
    /// delivered in order, and a newer one supersedes an older one still
    /// waiting. Empty: no group, no ordering.
    pub group_key: String,
    pub payload: String,
    pub alert_count: i64,
    pub alertnames: String,
}

/// Alerts that could not be turned into a message; kept, never dropped silently.
#[derive(Clone, Debug)]
pub struct Undeliverable {
    pub user_id: String,
    pub raw_user_id: Option<String>,
    pub receiver: String,
    pub reason: UndeliverableReason,
    pub alert: String,
}

#[derive(Clone, Debug)]
pub struct IngestBatch {
    pub dedupe_key: String,
    pub now: Millis,
    pub dedupe_expires_at: Millis,
    pub messages: Vec<NewMessage>,
    pub undeliverable: Vec<Undeliverable>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored; older messages of the same (channel, group) that were still
    /// waiting became final as superseded. `waiting`: how many of its
    /// messages wait in the outbox to be claimed (the others were handed to
    /// this process's dispatcher at insert; see `Store::hand_off_to`).
    Accepted {
        superseded: Vec<Superseded>,
        waiting: usize,
    },
    Duplicate,
}

/// A message that a newer one of its (channel, group) replaced before it was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superseded {
    pub message_id: i64,
    pub user_id: String,
    pub integration: IntegrationKind,
}

/// What became of a recorded attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Stored as the attempt said.
    Applied,
    /// It would have waited (a retry, a hold, pacing), but a newer message of
    /// its (channel, group) is queued: final as superseded instead.
    Superseded,
    /// The lease was lost (another worker holds the message now): nothing stored.
    LeaseLost,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ClaimedMessage {
    pub id: i64,
    pub user_id: String,
    pub channel_id: String,
    pub integration: IntegrationKind,
    pub payload: String,
    pub created_at: Millis,
    /// Attempts made before this one.
    pub attempts: i64,
    /// Deferred by pacing into a reserved slot: send now, without waiting again.
    pub paced: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Failed,
    Retry {
        due_at: Millis,
    },
    /// Not sent yet, and not an attempt: back to the outbox until `due_at`.
    /// `paced`: pacing reserved that slot for it, so it sends without waiting again.
    Defer {
        due_at: Millis,
        paced: bool,
    },
}

/// One finished attempt and what it means for its message.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub message_id: i64,
    pub user_id: String,
    pub integration: IntegrationKind,
    pub attempt: i64,
    pub started_at: Millis,
    pub duration_ms: i64,
    /// `success` or why it failed; None for a deferral (nothing was tried).
    pub result: Option<AttemptResult>,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    /// SMS segments used, where the integration counts them.
    pub segments: Option<i64>,
    /// False when nothing was sent (a plan limit refused it, or pacing
    /// deferred it): no attempt row is stored and no attempt counted.
    pub attempted: bool,
    pub outcome: Outcome,
    pub finished_at: Millis,
}

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct Period {
    pub id: String,
    /// Set for a user's settled statement.
    pub user_id: Option<String>,
    pub start_at: Millis,
    /// None while open.
    pub end_at: Option<Millis>,
    pub closed_at: Option<Millis>,
    /// Frozen at close.
    pub currency: Option<String>,
    pub bill_failed: Option<bool>,
    pub report_sha256: Option<String>,
    /// What an SMS billed, frozen at close; None while open, and for periods
    /// closed before billing units existed (their reports have no `units`).
    pub sms_unit: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UsageRow {
    pub user_id: String,
    pub integration: IntegrationKind,
    pub delivered: i64,
    pub failed: i64,
    /// SMS segments of the delivered and the failed messages (0 for other
    /// integrations).
    pub delivered_segments: i64,
    pub failed_segments: i64,
    /// The unit price frozen at close; None while the period is open.
    pub unit_price: Option<Decimal>,
}

/// One message of a period, for the itemized export.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ItemRow {
    pub message_id: i64,
    pub final_at: Millis,
    pub user_id: String,
    #[sqlx(try_from = "String")]
    pub integration: IntegrationKind,
    pub channel_id: String,
    pub alertnames: String,
    #[sqlx(try_from = "String")]
    pub outcome: MessageState,
    pub attempts: i64,
    pub last_reason: Option<String>,
    /// An SMS's segments (what it bills with `sms_unit = "segment"`).
    pub segments: Option<i64>,
}

/// Prices to freeze into a closing period's rows.
#[derive(Clone, Debug)]
pub struct Freeze {
    pub currency: String,
    pub bill_failed: bool,
    pub sms_unit: crate::config::SmsUnit,
    /// (integration, unit price) for every integration.
    pub prices: Vec<(IntegrationKind, Decimal)>,
    /// (user_id, integration, unit price) overrides.
    pub user_prices: Vec<(String, IntegrationKind, Decimal)>,
}

/// A finance page sign-in.
#[derive(Clone, Debug)]
pub struct NewSession {
    /// Hex SHA-256 of the session id.
    pub id_hash: String,
    /// The role the session grants, for reads only.
    pub role: String,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub client_addr: Option<String>,
}

/// A channel changed after a version of the channel log: what it is now
/// (`None`: deleted, or no longer parses).
#[derive(Debug)]
pub struct ChannelChange {
    pub version: i64,
    pub user_id: String,
    pub channel_id: String,
    pub channel: Option<Channel>,
}

//! The delivery log (`GET /v1/users/{user_id}/messages`), the undeliverable
//! list (`GET /v1/undeliverable`) and redelivery
//! (`POST /v1/messages/{message_id}/redeliver`). Lists are newest first and
//! paged by cursor: a full page answers `next_cursor`, which `?cursor=`
//! takes to give the page after it.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::clock::{rfc3339, Millis};
use crate::domain::{MessageState, UndeliverableReason, UserId};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{LogFilter, LoggedMessage, LoggedUndeliverable, Redelivery};

/// A page's size when `?limit=` is not given, and the largest it may ask.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

/// The query of a list, as text: each is checked here, so that a bad value
/// gets a JSON 400 naming it (not the extractor's plain-text rejection).
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    reason: Option<String>,
    since: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

impl ListQuery {
    /// The filter, with `value`, the parameter `name` (the state or the
    /// reason), checked by `parse`.
    fn filter(
        &self,
        (name, value): (&str, Option<&String>),
        parse: fn(&str) -> Result<(), String>,
    ) -> Result<LogFilter, ApiError> {
        let bad = |name: &str, e: String| ApiError::BadRequest(format!("?{name}=: {e}"));
        let state = match value {
            Some(v) => {
                parse(v).map_err(|e| bad(name, e))?;
                Some(v.clone())
            }
            None => None,
        };
        let since = self
            .since
            .as_deref()
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| t.timestamp_millis())
                    .map_err(|e| {
                        bad(
                            "since",
                            format!("{e} (an RFC 3339 time, e.g. 2026-12-01T00:00:00Z)"),
                        )
                    })
            })
            .transpose()?;
        let limit = match self.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(l) => l
                .parse::<i64>()
                .ok()
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .ok_or_else(|| {
                    bad(
                        "limit",
                        format!("{l:?} is not a number from 1 to {MAX_LIMIT}"),
                    )
                })?,
        };
        let before = self
            .cursor
            .as_deref()
            .map(|c| {
                c.parse::<i64>()
                    .map_err(|_| bad("cursor", format!("{c:?} is not a cursor from next_cursor")))
            })
            .transpose()?;
        Ok(LogFilter {
            state,
            since,
            before,
            limit,
        })
    }
}

/// The query, or a JSON 400 saying what is wrong with it (a parameter
/// given twice, say), never the extractor's plain-text answer.
fn query(q: Result<Query<ListQuery>, QueryRejection>) -> Result<ListQuery, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::BadRequest(format!("?…: {}", e.body_text())))
}

/// The cursor of the page after `ids` (a full page), if there may be one.
fn next_cursor(ids: impl DoubleEndedIterator<Item = i64> + ExactSizeIterator, limit: i64) -> Value {
    let full = ids.len() as i64 == limit;
    match (full, ids.last()) {
        (true, Some(id)) => json!(id.to_string()),
        _ => Value::Null,
    }
}

fn time(ms: Option<Millis>) -> Value {
    ms.map_or(Value::Null, |ms| json!(rfc3339(ms)))
}

fn message_view(m: &LoggedMessage) -> Value {
    let attempts: Vec<Value> = m
        .attempt_log
        .iter()
        .map(|a| {
            json!({
                "attempt": a.attempt, "started_at": rfc3339(a.started_at),
                "duration_ms": a.duration_ms, "result": a.result,
                "status_code": a.status_code, "error": a.error, "segments": a.segments,
            })
        })
        .collect();
    json!({
        "message_id": m.id, "channel_id": m.channel_id, "integration": m.integration,
        "state": m.state, "alerts": m.alert_count, "alertnames": m.alertnames,
        "accepted_at": rfc3339(m.created_at), "final_at": time(m.final_at),
        "last_reason": m.last_reason, "last_error": m.last_error, "segments": m.segments,
        "period_id": m.period_id, "attempts": attempts,
    })
}

/// `GET /v1/users/{user_id}/messages` (admin, finance): `?state=`, `?since=`,
/// `?limit=`, `?cursor=`.
#[utoipa::path(get, path = "/v1/users/{user_id}/messages", tag = "deliveries",
    params(("user_id" = String, Path, description = "1 to 128 letters, digits, _ - . @"), ("state" = Option<String>, Query, description = "pending, delivered, failed or superseded"), ("since" = Option<String>, Query, description = "RFC 3339: only those at or after"), ("limit" = Option<i64>, Query, description = "1 to 1000, default 100"), ("cursor" = Option<String>, Query, description = "next_cursor of the page before")),
    security(("finance" = []), ("admin" = [])),
    responses((status = 200, description = "A page of the user's messages, newest first, with their attempts", body = crate::api::openapi::MessageLogDoc), (status = 400, description = "A bad query or body", body = crate::api::openapi::ErrorDoc), (status = 401, description = "No or a wrong token", body = crate::api::openapi::ErrorDoc), (status = 403, description = "A token of another role", body = crate::api::openapi::ErrorDoc), (status = 422, description = "Invalid ids or body", body = crate::api::openapi::ErrorDoc), (status = 503, description = "The store cannot answer now (Retry-After)", body = crate::api::openapi::ErrorDoc)))]
pub async fn user_messages(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let user = UserId::parse(&user_id).map_err(ApiError::Unprocessable)?;
    let parse: fn(&str) -> Result<(), String> = |s| s.parse::<MessageState>().map(drop);
    let filter = q.filter(("state", q.state.as_ref()), parse)?;
    let messages = state.store.user_messages(user.as_str(), &filter).await?;
    Ok(Json(json!({
        "user_id": user.as_str(),
        "messages": messages.iter().map(message_view).collect::<Vec<_>>(),
        "next_cursor": next_cursor(messages.iter().map(|m| m.id), filter.limit),
    })))
}

fn undeliverable_view(u: &LoggedUndeliverable) -> Value {
    json!({
        "id": u.id, "received_at": rfc3339(u.received_at), "user_id": u.user_id,
        "raw_user_id": u.raw_user_id, "receiver": u.receiver, "reason": u.reason,
        "alert": serde_json::from_str::<Value>(&u.alert).unwrap_or_else(|_| json!(u.alert)),
    })
}

/// `GET /v1/undeliverable` (admin): `?reason=`, `?since=`, `?limit=`, `?cursor=`.
#[utoipa::path(get, path = "/v1/undeliverable", tag = "deliveries",
    params(("reason" = Option<String>, Query, description = "One undeliverable reason"), ("since" = Option<String>, Query, description = "RFC 3339: only those at or after"), ("limit" = Option<i64>, Query, description = "1 to 1000, default 100"), ("cursor" = Option<String>, Query, description = "next_cursor of the page before")),
    security(("admin" = [])),
    responses((status = 200, description = "A page of undeliverable alerts, newest first", body = crate::api::openapi::UndeliverableListDoc), (status = 400, description = "A bad query or body", body = crate::api::openapi::ErrorDoc), (status = 401, description = "No or a wrong token", body = crate::api::openapi::ErrorDoc), (status = 403, description = "A token of another role", body = crate::api::openapi::ErrorDoc), (status = 503, description = "The store cannot answer now (Retry-After)", body = crate::api::openapi::ErrorDoc)))]
pub async fn undeliverable(
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let parse: fn(&str) -> Result<(), String> = |s| s.parse::<UndeliverableReason>().map(drop);
    let filter = q.filter(("reason", q.reason.as_ref()), parse)?;
    let rows = state.store.undeliverable(&filter).await?;
    Ok(Json(json!({
        "undeliverable": rows.iter().map(undeliverable_view).collect::<Vec<_>>(),
        "next_cursor": next_cursor(rows.iter().map(|u| u.id), filter.limit),
    })))
}

/// `POST /v1/messages/{message_id}/redeliver` (admin): a failed message
/// queued again as a new message (billed when it is delivered): 202 with its
/// id; 404 for no such message; 409 when it is not failed.
#[utoipa::path(post, path = "/v1/messages/{message_id}/redeliver", tag = "deliveries",
    params(("message_id" = i64, Path, description = "A failed message")), security(("admin" = [])),
    responses((status = 202, description = "Queued as a new message", body = crate::api::openapi::RedeliverDoc), (status = 401, description = "No or a wrong token", body = crate::api::openapi::ErrorDoc), (status = 403, description = "A token of another role", body = crate::api::openapi::ErrorDoc), (status = 404, description = "No such resource", body = crate::api::openapi::ErrorDoc), (status = 409, description = "A conflict (see the message)", body = crate::api::openapi::ErrorDoc), (status = 503, description = "The store cannot answer now (Retry-After)", body = crate::api::openapi::ErrorDoc)))]
pub async fn redeliver(
    State(state): State<AppState>,
    Path(message_id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id: i64 = message_id
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no message {message_id:?}")))?;
    let group = format!("redeliver:{id}:{}", uuid::Uuid::new_v4().simple());
    match state
        .store
        .redeliver(id, group, state.clock.now_ms())
        .await?
    {
        Redelivery::Queued { message_id: new } => {
            tracing::info!(
                message_id = id,
                new_message_id = new,
                "message redelivered as a new one"
            );
            state.wake.notify_one();
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"message_id": new, "redelivers": id, "state": "pending"})),
            ))
        }
        Redelivery::NotFound => Err(ApiError::NotFound(format!("no message {id}"))),
        Redelivery::NotFailed(s) => Err(ApiError::Conflict(format!(
            "message {id} is {s}: only a failed message can be redelivered"
        ))),
        Redelivery::ChannelUnusable => Err(ApiError::Conflict(format!(
            "message {id}'s channel is gone, disabled or of another type now: nothing to redeliver to"
        ))),
        Redelivery::Already(0) => Err(ApiError::Conflict(format!(
            "message {id} is being redelivered by another request"
        ))),
        Redelivery::Already(new) => Err(ApiError::Conflict(format!(
            "message {id} was redelivered already, as message {new}"
        ))),
    }
}

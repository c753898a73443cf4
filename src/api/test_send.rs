//! `POST /v1/users/{user_id}/channels/{channel_id}/test` (admin): sends a
//! test notification to the channel now, through the same integration code
//! and outbound guard as deliveries, and answers its outcome. Nothing is
//! stored or billed; it is counted in `notimeter_test_sends_total`. A
//! disabled channel can be tested too (before it is enabled, say).

use std::time::Instant;

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::dispatch::{Reason, SendContext, SendError};
use crate::domain::{ChannelId, ReceiverName, UserId, WebhookPayload};
use crate::error::ApiError;
use crate::state::AppState;

/// The notification a test sends: one firing alert of the user, as
/// Alertmanager would post it to the channel's receiver.
pub fn sample(user: &UserId, channel: &ChannelId, external_url: &str, now: &str) -> WebhookPayload {
    let receiver = ReceiverName::new(user.clone(), channel.clone()).to_string();
    let labels =
        json!({"alertname": "NotimeterTest", "severity": "info", "user_id": user.as_str()});
    let annotations = json!({
        "summary": "Test notification from notimeter",
        "description": format!("A test of channel {channel} of user {user}: if you read this, it works."),
    });
    serde_json::from_value(json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"NotimeterTest\", user_id=\"{user}\"}}"),
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": receiver,
        "groupLabels": {"alertname": "NotimeterTest", "user_id": user.as_str()},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [{
            "status": "firing", "labels": labels, "annotations": annotations,
            "startsAt": now, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": "0000000000000000",
        }],
    }))
    .expect("the sample is a valid Alertmanager payload")
}

#[utoipa::path(post, path = "/v1/users/{user_id}/channels/{channel_id}/test", tag = "deliveries",
    params(("user_id" = String, Path, description = "1 to 128 letters, digits, _ - . @"), ("channel_id" = String, Path, description = "1 to 128 letters, digits, _ - . @")), security(("admin" = [])),
    responses((status = 200, description = "Sent once, now: its outcome (not stored, not billed)", body = crate::api::openapi::TestSendDoc), (status = 401, description = "No or a wrong token", body = crate::api::openapi::ErrorDoc), (status = 403, description = "A token of another role", body = crate::api::openapi::ErrorDoc), (status = 404, description = "No such resource", body = crate::api::openapi::ErrorDoc), (status = 422, description = "Invalid ids or body", body = crate::api::openapi::ErrorDoc), (status = 503, description = "The store cannot answer now (Retry-After)", body = crate::api::openapi::ErrorDoc), (status = 500, description = "The channel's stored settings are corrupt", body = crate::api::openapi::ErrorDoc)))]
pub async fn test(
    State(state): State<AppState>,
    Path((user_id, channel_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let user = UserId::parse(&user_id).map_err(ApiError::Unprocessable)?;
    let channel = ChannelId::parse(&channel_id).map_err(ApiError::Unprocessable)?;
    let Some((_, settings)) = state.routes.sendable(user.as_str(), channel.as_str()) else {
        return Err(ApiError::NotFound(format!(
            "no channel {channel} for user {user}"
        )));
    };
    let sendable = settings.map_err(|e| {
        ApiError::Internal(anyhow::anyhow!("the channel's settings are corrupt: {e}"))
    })?;
    let settings = &sendable.settings;
    let kind = settings.kind();
    let now = crate::clock::rfc3339(state.clock.now_ms());
    let payload = sample(&user, &channel, "", &now);
    // With the channel's templates, as a delivery would be (a failing one
    // falls back to its default text, and the answer says why).
    let rendered = crate::templating::render(&sendable.templates, &payload);
    let template_failures: Vec<Value> = rendered
        .failures
        .iter()
        .map(|(field, error)| json!({"field": field.as_str(), "error": error}))
        .collect();
    // A client of its own: test sends are rare, and must not wait behind
    // (or hold) the dispatcher's.
    let ctx = SendContext::new(state.settings.clone()).map_err(ApiError::Internal)?;
    let started = Instant::now();
    // Bounded like a delivery's attempt, whatever the integration's client does.
    let limit = state.settings.dispatch.send_timeout;
    let sent = tokio::time::timeout(
        limit,
        state
            .registry
            .send(&ctx, settings, &payload, &rendered.texts),
    )
    .await
    .unwrap_or_else(|_| {
        Err(SendError {
            reason: Reason::ContextDeadlineExceeded,
            retryable: true,
            retry_after: None,
            status: None,
            detail: format!("no answer within {limit:?}"),
        })
    });
    let duration_ms = started.elapsed().as_millis() as u64;
    state
        .metrics
        .test_sent(&user, &channel, kind, sent.as_ref().err().map(|e| e.reason));
    Ok(Json(match sent {
        Ok(s) => json!({
            "user_id": user.as_str(), "channel_id": channel.as_str(), "integration": kind,
            "result": "delivered", "status_code": s.status, "duration_ms": duration_ms,
            "segments": s.segments, "template_failures": template_failures,
        }),
        Err(e) => json!({
            "user_id": user.as_str(), "channel_id": channel.as_str(), "integration": kind,
            "result": "failed", "reason": e.reason.as_str(), "status_code": e.status,
            "duration_ms": duration_ms, "error": e.detail, "template_failures": template_failures,
        }),
    }))
}

//! `PUT|GET|DELETE /v1/users/{user_id}/channels/{channel_id}` and the list.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;

use super::JsonBody;
use crate::app::AppState;
use crate::clock::{now_ms, rfc3339};
use crate::dispatch::{redact, restore_secrets, ValidateContext};
use crate::domain::{ChannelId, ChannelSpec, Matchers, UserId};
use crate::error::ApiError;
use crate::store::ChannelRecord;

#[derive(Serialize)]
pub struct ChannelView {
    user_id: String,
    channel_id: String,
    #[serde(rename = "type")]
    kind: String,
    settings: Value,
    matchers: Vec<String>,
    send_resolved: bool,
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_by: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_wait: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repeat_interval: Option<String>,
    created_at: String,
    updated_at: String,
}

fn ids(user_id: &str, channel_id: &str) -> Result<(UserId, ChannelId), ApiError> {
    Ok((
        UserId::parse(user_id).map_err(ApiError::Unprocessable)?,
        ChannelId::parse(channel_id).map_err(ApiError::Unprocessable)?,
    ))
}

fn view(state: &AppState, rec: &ChannelRecord) -> Result<ChannelView, ApiError> {
    let mut spec: ChannelSpec = serde_json::from_str(&rec.spec)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored channel is corrupt: {e}")))?;
    match state.registry.get(&spec.kind) {
        Some(integration) => redact(&mut spec.settings, integration.secret_fields()),
        // Unknown to this build: show nothing rather than risk a secret.
        None => spec.settings = Value::Object(Default::default()),
    }
    Ok(ChannelView {
        user_id: rec.user_id.clone(),
        channel_id: rec.channel_id.clone(),
        kind: spec.kind,
        settings: spec.settings,
        matchers: spec.matchers,
        send_resolved: spec.send_resolved,
        enabled: spec.enabled,
        group_by: spec.group_by,
        group_wait: spec.group_wait,
        group_interval: spec.group_interval,
        repeat_interval: spec.repeat_interval,
        created_at: rfc3339(rec.created_at),
        updated_at: rfc3339(rec.updated_at),
    })
}

pub async fn put(
    State(state): State<AppState>,
    Path((user_id, channel_id)): Path<(String, String)>,
    JsonBody(mut spec): JsonBody<ChannelSpec>,
) -> Result<Response, ApiError> {
    let (user, channel) = ids(&user_id, &channel_id)?;
    let integration = state.registry.get(&spec.kind).ok_or_else(|| {
        let known: Vec<_> = state.registry.names().collect();
        ApiError::Unprocessable(format!(
            "unknown channel type {:?}; known types: {}",
            spec.kind,
            known.join(", ")
        ))
    })?;
    let matchers = Matchers::parse_all(&spec.matchers).map_err(ApiError::Unprocessable)?;
    spec.check_timing(state.settings.dedupe_window)
        .map_err(ApiError::Unprocessable)?;
    spec.matchers = matchers.to_strings();
    if let Some(previous) = state
        .store
        .get_channel(user.as_str(), channel.as_str())
        .await?
    {
        if let Ok(old) = serde_json::from_str::<ChannelSpec>(&previous.spec) {
            if old.kind == spec.kind {
                restore_secrets(
                    &mut spec.settings,
                    &old.settings,
                    integration.secret_fields(),
                );
            }
        }
    }
    let guard = crate::dispatch::guard::Guard::new(state.settings.outbound_allow.clone());
    integration
        .validate(
            &spec.settings,
            &ValidateContext {
                settings: &state.settings,
                guard: &guard,
            },
        )
        .map_err(ApiError::Unprocessable)?;
    let now = now_ms();
    let record = ChannelRecord {
        user_id: user.to_string(),
        channel_id: channel.to_string(),
        integration: spec.kind.clone(),
        enabled: spec.enabled,
        spec: serde_json::to_string(&spec).map_err(|e| ApiError::Internal(e.into()))?,
        created_at: now,
        updated_at: now,
    };
    let created = state.store.put_channel(&record).await?;
    state.render_trigger.notify_one();
    let stored = state
        .store
        .get_channel(user.as_str(), channel.as_str())
        .await?
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("channel vanished after it was saved"))
        })?;
    tracing::info!(user_id = %user, channel_id = %channel, integration = %spec.kind, created, "channel saved");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(&state, &stored)?)).into_response())
}

pub async fn get(
    State(state): State<AppState>,
    Path((user_id, channel_id)): Path<(String, String)>,
) -> Result<Json<ChannelView>, ApiError> {
    let (user, channel) = ids(&user_id, &channel_id)?;
    let rec = state
        .store
        .get_channel(user.as_str(), channel.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {user} has no channel {channel}")))?;
    Ok(Json(view(&state, &rec)?))
}

pub async fn delete(
    State(state): State<AppState>,
    Path((user_id, channel_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (user, channel) = ids(&user_id, &channel_id)?;
    if state
        .store
        .delete_channel(user.as_str(), channel.as_str())
        .await?
    {
        state.render_trigger.notify_one();
        tracing::info!(user_id = %user, channel_id = %channel, "channel deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "user {user} has no channel {channel}"
        )))
    }
}

pub async fn list(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user = UserId::parse(&user_id).map_err(ApiError::Unprocessable)?;
    let channels = state
        .store
        .list_channels(user.as_str())
        .await?
        .iter()
        .map(|rec| view(&state, rec))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(
        serde_json::json!({"user_id": user, "channels": channels}),
    ))
}

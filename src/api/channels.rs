//! `PUT|GET|DELETE /v1/users/{user_id}/channels/{channel_id}` and the list.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;

use super::JsonBody;
use crate::channels::SaveError;
use crate::clock::rfc3339;
use crate::domain::{Channel, ChannelId, ChannelSource, ChannelSpec, UserId};
use crate::error::ApiError;
use crate::state::AppState;

/// A channel as the API shows it: the body it was saved with (secrets as
/// the placeholder), its ids and its times.
#[derive(Serialize)]
pub struct ChannelView {
    user_id: String,
    channel_id: String,
    #[serde(flatten)]
    spec: ChannelSpec,
    /// "api" or "consul" (see `ChannelSource`).
    source: &'static str,
    created_at: String,
    updated_at: String,
}

fn ids(user_id: &str, channel_id: &str) -> Result<(UserId, ChannelId), ApiError> {
    Ok((
        UserId::parse(user_id).map_err(ApiError::Unprocessable)?,
        ChannelId::parse(channel_id).map_err(ApiError::Unprocessable)?,
    ))
}

fn view(ch: &Channel) -> ChannelView {
    ChannelView {
        user_id: ch.user_id.to_string(),
        channel_id: ch.channel_id.to_string(),
        spec: ch.spec(),
        source: ch.source.as_str(),
        created_at: rfc3339(ch.created_at),
        updated_at: rfc3339(ch.updated_at),
    }
}

#[utoipa::path(put, path = "/v1/users/{user_id}/channels/{channel_id}", tag = "channels",
    params(("user_id" = String, Path, description = "1 to 128 letters, digits, _ - . @"), ("channel_id" = String, Path, description = "1 to 128 letters, digits, _ - . @")), request_body = ChannelSpec, security(("admin" = [])),
    responses((status = 200, description = "Replaced", body = crate::api::openapi::ChannelDoc), (status = 201, description = "Created", body = crate::api::openapi::ChannelDoc), (status = 400, description = "A bad query or body", body = crate::api::openapi::ErrorDoc), (status = 401, description = "No or a wrong token", body = crate::api::openapi::ErrorDoc), (status = 403, description = "A token of another role", body = crate::api::openapi::ErrorDoc), (status = 409, description = "A conflict (see the message)", body = crate::api::openapi::ErrorDoc), (status = 422, description = "Invalid ids or body", body = crate::api::openapi::ErrorDoc), (status = 503, description = "The store cannot answer now (Retry-After)", body = crate::api::openapi::ErrorDoc)))]
pub async fn put(
    State(state): State<AppState>,
    Path((user_id, channel_id)): Path<(String, String)>,
    JsonBody(spec): JsonBody<ChannelSpec>,
) -> Result<Response, ApiError> {
    let (user, channel) = ids(&user_id, &channel_id)?;
    let parsed = Channel::parse(user, channel, spec).map_err(ApiError::Unprocessable)?;
    let saved = crate::channels::save(
        &state.store,
        &state.registry,
        &state.settings,
        &state.clock,
        parsed,
    )
    .await
    .map_err(|e| match e {
        SaveError::Invalid(why) => ApiError::Unprocessable(why),
        SaveError::Owned(why) => ApiError::Conflict(why),
        SaveError::Store(e) => e.into(),
    })?;
    state.channels_changed().await;
    let ch = &saved.channel;
    tracing::info!(user_id = %ch.user_id, channel_id = %ch.channel_id, integration = %ch.kind(), created = saved.created, "channel saved");
    let status = if saved.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(ch))).into_response())
}

#[utoipa::path(get, path = "/v1/users/{user_id}/channels/{channel_id}", tag = "channels",
    params(("user_id" = String, Path, description = "1 to 128 letters, digits, _ - . @"), ("channel_id" = String, Path, description = "1 to 128 letters, digits, _ - . @")), security(("admin" = [])),
    responses((status = 200, description = "The channel, secrets as \"<secret>\"", body = crate::api::openapi::ChannelDoc), (status = 401, description = "No or a wrong token", body = crate::api::openapi::ErrorDoc), (status = 403, description = "A token of another role", body = crate::api::openapi::ErrorDoc), (status = 404, description = "No such resource", body = crate::api::openapi::ErrorDoc), (status = 422, description = "Invalid ids or body", body = crate::api::openapi::ErrorDoc), (status = 503, description = "The store cannot answer now (Retry-After)", body = crate::api::openapi::ErrorDoc)))]
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
    Ok(Json(view(&rec)))
}

#[utoipa::path(delete, path = "/v1/users/{user_id}/channels/{channel_id}", tag = "channels",
    params(("user_id" = String, Path, description = "1 to 128 letters, digits, _ - . @"), ("channel_id" = String, Path, description = "1 to 128 letters, digits, _ - . @")), security(("admin" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, description = "No or a wrong token", body = crate::api::openapi::ErrorDoc), (status = 403, description = "A token of another role", body = crate::api::openapi::ErrorDoc), (status = 404, description = "No such resource", body = crate::api::openapi::ErrorDoc), (status = 409, description = "A conflict (see the message)", body = crate::api::openapi::ErrorDoc), (status = 422, description = "Invalid ids or body", body = crate::api::openapi::ErrorDoc), (status = 503, description = "The store cannot answer now (Retry-After)", body = crate::api::openapi::ErrorDoc)))]
pub async fn delete(
    State(state): State<AppState>,
    Path((user_id, channel_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (user, channel) = ids(&user_id, &channel_id)?;
    if let Ok(Some(ch)) = state
        .store
        .get_channel(user.as_str(), channel.as_str())
        .await
    {
        if ch.source != ChannelSource::Api {
            return Err(ApiError::Conflict(crate::channels::owned_by(&ch)));
        }
    }
    if state
        .store
        .delete_channel_of(user.as_str(), channel.as_str(), Some(ChannelSource::Api))
        .await?
    {
        state.channels_changed().await;
        tracing::info!(user_id = %user, channel_id = %channel, "channel deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "user {user} has no channel {channel}"
        )))
    }
}

#[utoipa::path(get, path = "/v1/users/{user_id}/channels", tag = "channels",
    params(("user_id" = String, Path, description = "1 to 128 letters, digits, _ - . @")), security(("admin" = [])),
    responses((status = 200, description = "The user's channels", body = crate::api::openapi::ChannelListDoc), (status = 401, description = "No or a wrong token", body = crate::api::openapi::ErrorDoc), (status = 403, description = "A token of another role", body = crate::api::openapi::ErrorDoc), (status = 422, description = "Invalid ids or body", body = crate::api::openapi::ErrorDoc), (status = 503, description = "The store cannot answer now (Retry-After)", body = crate::api::openapi::ErrorDoc)))]
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
        .map(view)
        .collect::<Vec<_>>();
    Ok(Json(
        serde_json::json!({"user_id": user, "channels": channels}),
    ))
}

//! Liveness, readiness and the Prometheus endpoint.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::auth::{authorize, Role};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store;

/// How long a scrape waits for the store-derived gauges before it answers
/// with their last reading: Prometheus gets its counters whatever the store does.
const METRICS_STORE_BUDGET: Duration = Duration::from_millis(500);

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = crate::api::openapi::HealthDoc)))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the store takes a write transaction within `store_timeout`.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "The store takes a write transaction", body = crate::api::openapi::ReadyDoc), (status = 503, description = "The store cannot take it now (Retry-After)", body = crate::api::openapi::ErrorDoc)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    store::within(state.settings.store_timeout, state.store.check_writable()).await?;
    Ok(Json(
        json!({"status": "ready", "store": state.store.backend_name()}),
    ))
}

#[utoipa::path(get, path = "/metrics", tag = "operations", security(("metrics" = []), ()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String), (status = 401, description = "No or a wrong token", body = crate::api::openapi::ErrorDoc), (status = 403, description = "A token of another role", body = crate::api::openapi::ErrorDoc)))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state.settings, &headers, Role::Metrics)?;
    let text = state
        .metrics
        .render(&state.store, METRICS_STORE_BUDGET)
        .await;
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

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

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the store takes a write transaction within `store_timeout`.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    store::within(state.settings.store_timeout, state.store.check_writable()).await?;
    Ok(Json(
        json!({"status": "ready", "store": state.store.backend_name()}),
    ))
}

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

//! `POST /v1/alertmanager`: auth, size limit, parsing, attribution, dedupe, and
//! one transaction that writes every resulting message before the 200.

pub mod route;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tracing::{info, instrument};

use crate::app::AppState;
use crate::auth::{authorize, Role};
use crate::clock::{duration_ms, now_ms};
use crate::domain::alert::{dedupe_key, parse_alert, Envelope};
use crate::error::ApiError;
use crate::store::{self, Enqueued, IngestBatch};

#[instrument(skip_all, fields(receiver))]
pub async fn alertmanager(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Answers are counted by the route's layer (app::router), refusals included.
    match handle(&state, &headers, body).await {
        Ok(body) => (StatusCode::OK, Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn parse_envelope(body: &[u8]) -> Result<Envelope, ApiError> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::Unprocessable(format!("not an Alertmanager webhook payload: {e}"))
        }
        _ => ApiError::BadRequest(format!("malformed JSON: {e}")),
    })?;
    match envelope.version.as_deref() {
        None | Some("4") => Ok(envelope),
        Some(v) => Err(ApiError::Unprocessable(format!(
            "unsupported webhook payload version {v:?}; notimeter reads version \"4\""
        ))),
    }
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, ApiError> {
    authorize(&state.settings, headers, Role::Ingest)?;
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(state.settings.max_request_bytes)
        } else {
            ApiError::BadRequest(r.body_text())
        }
    })?;
    let envelope = parse_envelope(&body)?;
    tracing::Span::current().record("receiver", envelope.receiver.as_str());
    let parsed: Vec<_> = envelope.alerts.iter().map(parse_alert).collect();
    let key = dedupe_key(&envelope, &parsed);
    let deadline = tokio::time::Instant::now() + state.settings.store_timeout;
    let plan = store::within(
        state.settings.store_timeout,
        route::plan(&state.store, &envelope, parsed),
    )
    .await?;
    let now = now_ms();
    let batch = IngestBatch {
        dedupe_key: key,
        now,
        dedupe_expires_at: now + duration_ms(state.settings.dedupe_window),
        messages: plan.messages,
        undeliverable: plan.undeliverable,
    };
    let (messages, undeliverable_reasons): (usize, Vec<&'static str>) = (
        batch.messages.len(),
        batch.undeliverable.iter().map(|u| u.reason).collect(),
    );
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    match store::within(left, state.store.enqueue(batch)).await? {
        Enqueued::Duplicate => {
            state.metrics.duplicates.inc();
            info!(
                alerts = envelope.alerts.len(),
                "duplicate notification ignored"
            );
            Ok(json!({"status": "duplicate"}))
        }
        Enqueued::Accepted { superseded } => {
            for s in &superseded {
                state.metrics.superseded(&s.user_id, &s.integration);
            }
            if !superseded.is_empty() {
                info!(
                    messages = superseded.len(),
                    "older messages of the group superseded before they were sent"
                );
            }
            for user in &plan.received {
                let label = state.metrics.user_label(user);
                state
                    .metrics
                    .alerts_received
                    .with_label_values(&[label])
                    .inc();
            }
            for reason in &undeliverable_reasons {
                state
                    .metrics
                    .alerts_undeliverable
                    .with_label_values(&[reason])
                    .inc();
            }
            if messages > 0 {
                state.wake.notify_one();
            }
            Ok(json!({
                "status": "accepted",
                "alerts": envelope.alerts.len(),
                "messages": messages,
                "undeliverable": undeliverable_reasons.len(),
            }))
        }
    }
}

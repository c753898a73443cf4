//! `POST /v1/alertmanager`: auth, a bound on requests handled at once, size
//! limit, parsing, attribution, dedupe, and one transaction that writes every
//! resulting message before the 200.
//!
//! Memory: a request's body, its parsed alerts and the messages built from
//! them are not all alive at once (the body is dropped once the alerts are
//! parsed, the alerts once the messages are built), and at most
//! `max_concurrent_ingests` requests get that far at a time.

pub mod route;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tracing::{info, instrument};

use crate::app::AppState;
use crate::auth::{authorize, Role};
use crate::clock::{duration_ms, now_ms};
use crate::config::Settings;
use crate::domain::alert::{dedupe_key, Envelope};
use crate::error::ApiError;
use crate::store::{self, Enqueued, IngestBatch};

/// The bound on webhook requests handled at once (`max_concurrent_ingests`).
#[derive(Clone)]
pub struct IngestLimit {
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
}

impl IngestLimit {
    pub fn new(settings: &Settings) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(settings.max_concurrent_ingests)),
            queue_timeout: settings.ingest_queue_timeout,
        }
    }
}

/// Middleware on the ingest route, inside the auth layer: a request waits up to
/// `ingest_queue_timeout` for its turn, and is answered 503 with `Retry-After`
/// if none comes (Alertmanager retries, so nothing is lost). Its body is read
/// only once it has its turn, so waiting requests hold no payload. The turn
/// is given back when the response is ready or the request is dropped.
pub async fn limit(State(limit): State<IngestLimit>, request: Request, next: Next) -> Response {
    let turn =
        tokio::time::timeout(limit.queue_timeout, limit.permits.clone().acquire_owned()).await;
    let Ok(Ok(_permit)) = turn else {
        // Counted in notimeter_webhook_requests_total by the layer around it.
        return ApiError::Busy("too many webhook requests in progress").into_response();
    };
    next.run(request).await
}

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
    let mut envelope = parse_envelope(&body)?;
    drop(body);
    tracing::Span::current().record("receiver", envelope.receiver.as_str());
    let alerts = std::mem::take(&mut envelope.alerts);
    let received = alerts.len();
    let key = dedupe_key(&envelope, &alerts);
    let deadline = tokio::time::Instant::now() + state.settings.store_timeout;
    // Consumes the alerts: only the messages' payloads are left after it.
    let plan = store::within(
        state.settings.store_timeout,
        route::plan(&state.store, &envelope, alerts),
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
            info!(alerts = received, "duplicate notification ignored");
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
            for (user, n) in &plan.received {
                let label = state.metrics.user_label(user);
                state
                    .metrics
                    .alerts_received
                    .with_label_values(&[label])
                    .inc_by(*n);
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
                "alerts": received,
                "messages": messages,
                "undeliverable": undeliverable_reasons.len(),
            }))
        }
    }
}

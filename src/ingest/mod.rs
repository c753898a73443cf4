//! `POST /v1/alertmanager`: auth, a bound on requests handled at once, size
//! limit, parsing, attribution, dedupe, and one transaction that writes every
//! resulting message before the 200.
//!
//! Memory: a request's body, its parsed alerts and the messages built from
//! them are not all alive at once (the body is dropped once the alerts are
//! parsed, the alerts once the messages are built), and at most
//! `max_concurrent_ingests` requests get that far at a time.

pub mod attribution;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{instrument, Instrument};

use crate::auth::{authorize, Role};
use crate::clock::duration_ms;
use crate::config::Settings;
use crate::domain::alert::{dedupe_key, Envelope};
use crate::domain::UndeliverableReason;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{Enqueued, IngestBatch, StoreError};

/// The bounds on webhook requests handled at once: `max_concurrent_ingests`
/// requests, and `max_ingest_bytes` of bodies (in KiB; a request takes its
/// `Content-Length`'s share, one of unknown length `max_request_bytes`), so
/// many small notifications are handled at once (and share a commit) while
/// large ones stay few.
#[derive(Clone)]
pub struct IngestLimit {
    turns: Arc<Semaphore>,
    kib: Arc<Semaphore>,
    /// The most KiB one request takes.
    largest: u32,
    queue_timeout: Duration,
}

const KIB: usize = 1024;

impl IngestLimit {
    pub fn new(settings: &Settings) -> Self {
        let total = settings
            .max_ingest_bytes
            .div_ceil(KIB)
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let largest = settings.max_request_bytes.div_ceil(KIB).clamp(1, total);
        Self {
            turns: Arc::new(Semaphore::new(settings.max_concurrent_ingests)),
            kib: Arc::new(Semaphore::new(total)),
            largest: largest as u32,
            queue_timeout: settings.ingest_queue_timeout,
        }
    }

    /// The KiB a request takes from the budget.
    fn share(&self, request: &Request) -> u32 {
        request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .map_or(self.largest, |len| {
                len.div_ceil(KIB).clamp(1, self.largest as usize) as u32
            })
    }

    /// A turn for a request taking `share` KiB: a place and those bytes.
    async fn turn(&self, share: u32) -> Option<IngestTurn> {
        let wait = async {
            let place = self.turns.clone().acquire_owned().await.ok()?;
            let bytes = self.kib.clone().acquire_many_owned(share).await.ok()?;
            Some(IngestTurn(Arc::new((place, bytes))))
        };
        tokio::time::timeout(self.queue_timeout, wait)
            .await
            .ok()
            .flatten()
    }
}

/// Middleware on the ingest route, inside the auth layer: a request waits up to
/// `ingest_queue_timeout` for its turn, and is answered 503 with `Retry-After`
/// if none comes (Alertmanager retries, so nothing is lost). Its body is read
/// only once it has its turn, so waiting requests hold no payload. The turn
/// is given back when the request is done with it: when the response is
/// ready or the request is dropped, or later, when the store write it started
/// ends (that write holds the batch in memory).
pub async fn limit(State(limit): State<IngestLimit>, mut request: Request, next: Next) -> Response {
    let share = limit.share(&request);
    let Some(turn) = limit.turn(share).await else {
        // Counted in notimeter_webhook_requests_total by the layer around it.
        return ApiError::Busy("too many webhook requests in progress").into_response();
    };
    request.extensions_mut().insert(turn);
    next.run(request).await
}

/// A request's turn under `max_concurrent_ingests`; held until its last clone drops.
#[derive(Clone)]
pub struct IngestTurn(#[allow(dead_code)] Arc<(OwnedSemaphorePermit, OwnedSemaphorePermit)>);

#[instrument(skip_all, fields(receiver, group_key, alerts))]
#[utoipa::path(post, path = "/v1/alertmanager", tag = "ingest",
    request_body = crate::api::openapi::AlertmanagerPayloadDoc, security(("ingest" = [])),
    responses((status = 200, description = "Stored (or a duplicate)", body = crate::api::openapi::IngestDoc), (status = 400, description = "A bad query or body", body = crate::api::openapi::ErrorDoc), (status = 401, description = "No or a wrong token", body = crate::api::openapi::ErrorDoc), (status = 403, description = "A token of another role", body = crate::api::openapi::ErrorDoc), (status = 408, description = "The body did not arrive in time", body = crate::api::openapi::ErrorDoc), (status = 413, description = "The body is too large", body = crate::api::openapi::ErrorDoc), (status = 422, description = "Invalid ids or body", body = crate::api::openapi::ErrorDoc), (status = 503, description = "The store cannot take it now (Retry-After)", body = crate::api::openapi::ErrorDoc)))]
pub async fn alertmanager(
    State(state): State<AppState>,
    headers: HeaderMap,
    turn: Option<Extension<IngestTurn>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Answers are counted by the route's layer (app::router), refusals included.
    let turn = turn.map(|Extension(turn)| turn);
    match handle(&state, &headers, turn, body).await {
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
    turn: Option<IngestTurn>,
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
    let alerts = std::mem::take(&mut envelope.alerts);
    let received = alerts.len();
    tracing::Span::current()
        .record("receiver", envelope.receiver.as_str())
        .record("group_key", envelope.group_key.as_str())
        .record("alerts", received);
    let key = dedupe_key(&envelope, &alerts);
    let deadline = tokio::time::Instant::now() + state.settings.store_timeout;
    // Consumes the alerts: only the messages' payloads are left after it.
    let plan = attribution::plan(&state.routes, &envelope, alerts);
    let now = state.clock.now_ms();
    let batch = IngestBatch {
        dedupe_key: key,
        now,
        dedupe_expires_at: now + duration_ms(state.settings.dedupe_window),
        messages: plan.messages,
        undeliverable: plan.undeliverable,
    };
    let (messages, undeliverable) = (batch.messages.len(), batch.undeliverable.len());
    let (begun, store_began) = tokio::sync::oneshot::channel();
    let mut stored = store_and_count(state.clone(), batch, plan.received, turn, begun);
    let stored_now = |joined: Result<Result<Enqueued, StoreError>, tokio::task::JoinError>| {
        joined.map_err(|e| StoreError::Interrupted(e.to_string()))?
    };
    // 503 unless the store begins the write within what is left of
    // `store_timeout` (a stalled or locked store); once it has, the write is
    // under way and is waited for, however large it is.
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let stored = tokio::select! {
        joined = &mut stored => stored_now(joined)?,
        began = tokio::time::timeout(left, store_began) => match began {
            Ok(_) => stored_now((&mut stored).await)?,
            Err(_) => return Err(StoreError::Timeout(state.settings.store_timeout).into()),
        },
    };
    Ok(match stored {
        Enqueued::Duplicate => json!({"status": "duplicate"}),
        Enqueued::Accepted { .. } => json!({
            "status": "accepted",
            "alerts": received,
            "messages": messages,
            "undeliverable": undeliverable,
        }),
    })
}

/// Stores the batch and counts what was stored, on a task of its own: a
/// request given up on (it timed out, its client hung up) still counts what
/// its write stored, and keeps its ingest turn until the write ends. The
/// task logs within the request's span.
fn store_and_count(
    state: AppState,
    batch: IngestBatch,
    received_by_user: BTreeMap<String, u64>,
    turn: Option<IngestTurn>,
    begun: tokio::sync::oneshot::Sender<()>,
) -> tokio::task::JoinHandle<Result<Enqueued, StoreError>> {
    let undeliverable: Vec<UndeliverableReason> =
        batch.undeliverable.iter().map(|u| u.reason).collect();
    let task = async move {
        let stored = state.store.enqueue_telling(batch, Some(begun)).await?;
        drop(turn);
        let metrics = &state.metrics;
        match &stored {
            Enqueued::Duplicate => metrics.duplicate(),
            Enqueued::Accepted {
                superseded,
                waiting,
            } => {
                metrics.superseded_on_enqueue(superseded);
                for (user, n) in &received_by_user {
                    metrics.alerts_received(user, *n);
                }
                for reason in undeliverable {
                    metrics.alert_undeliverable(reason);
                }
                // Those not handed to the dispatcher at insert are claimed.
                if *waiting > 0 {
                    state.wake.notify_one();
                }
            }
        }
        Ok(stored)
    };
    tokio::spawn(task.in_current_span())
}

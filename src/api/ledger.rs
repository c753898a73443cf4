//! Finance reads of the ledger and admin closes and settles:
//! `GET /v1/ledger/periods`, `GET /v1/ledger/periods/{id}.csv`,
//! `GET /v1/ledger/periods/{id}/items.csv`, `POST /v1/ledger/close`,
//! `POST /v1/users/{user_id}/settle`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::auth::{authorize, authorize_read, Role};
use crate::clock::rfc3339;
use crate::domain::UserId;
use crate::error::ApiError;
use crate::ledger::csv;
use crate::store::Period;

/// A buffer the CSV writer fills and the streaming task empties chunk by chunk.
#[derive(Clone, Default)]
struct SharedBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuffer {
    fn len(&self) -> usize {
        self.0.lock().map(|b| b.len()).unwrap_or(0)
    }
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default()
    }
}

impl std::io::Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn period_json(p: &Period) -> Value {
    json!({
        "period_id": p.id,
        "user_id": p.user_id,
        "kind": if p.user_id.is_some() { "statement" } else { "period" },
        "status": if p.end_at.is_some() { "closed" } else { "open" },
        "period_start": rfc3339(p.start_at),
        "period_end": p.end_at.map(rfc3339),
        "closed_at": p.closed_at.map(rfc3339),
        "currency": p.currency,
        "sha256": p.report_sha256,
        "csv": format!("/v1/ledger/periods/{}.csv", p.id),
        "items": format!("/v1/ledger/periods/{}/items.csv", p.id),
    })
}

pub async fn periods(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize_read(&state.settings, &headers, Role::Finance)?;
    let periods: Vec<Value> = state
        .store
        .list_periods()
        .await?
        .iter()
        .map(period_json)
        .collect();
    Ok(Json(json!({"periods": periods})))
}

async fn find(state: &AppState, id: &str) -> Result<Period, ApiError> {
    state
        .store
        .get_period(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no billing period {id:?}")))
}

fn csv_response(filename: String, body: Body, sha256: Option<String>) -> Response {
    let mut response = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response();
    if let Some(sha) = sha256.and_then(|s| format!("\"{s}\"").parse().ok()) {
        response.headers_mut().insert(header::ETAG, sha);
    }
    response
}

/// `GET /v1/ledger/periods/{id}.csv`: a closed period's report, byte for byte
/// the file in `reports/`; the open period as it stands.
pub async fn period_csv(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize_read(&state.settings, &headers, Role::Finance)?;
    let id = file.strip_suffix(".csv").ok_or_else(|| {
        ApiError::NotFound(format!(
            "no such resource {file:?}; periods are at /v1/ledger/periods/<id>.csv"
        ))
    })?;
    let period = find(&state, id).await?;
    let bytes = if period.end_at.is_some() {
        state.ledger.report(&period).await
    } else {
        state.ledger.csv(&period).await
    }
    .map_err(ApiError::Internal)?;
    Ok(csv_response(
        format!("notimeter-{}.csv", period.id),
        Body::from(bytes),
        period.report_sha256,
    ))
}

/// `GET /v1/ledger/periods/{id}/items.csv`: every message of the period, streamed.
pub async fn items_csv(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize_read(&state.settings, &headers, Role::Finance)?;
    let period = find(&state, &id).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    let store = state.store.clone();
    let period_id = period.id.clone();
    tokio::spawn(async move {
        let buffer = SharedBuffer::default();
        let Ok(mut w) = csv::items_writer(buffer.clone()) else {
            return;
        };
        let mut items = std::pin::pin!(store.items(&period_id));
        while let Some(item) = items.next().await {
            let written = match item {
                Ok(item) => {
                    csv::write_item(&mut w, &period_id, &item).map_err(std::io::Error::other)
                }
                Err(e) => Err(std::io::Error::other(e)),
            };
            if let Err(e) = written {
                tracing::error!(error = %e, period_id, "itemized export failed");
                let _ = tx.send(Err(e)).await;
                return;
            }
            if buffer.len() >= 60 * 1024 {
                let _ = w.flush();
                if tx.send(Ok(buffer.take())).await.is_err() {
                    return;
                }
            }
        }
        let _ = w.flush();
        let _ = tx.send(Ok(buffer.take())).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Ok(csv_response(
        format!("notimeter-{}-items.csv", period.id),
        Body::from_stream(stream),
        None,
    ))
}

pub async fn close(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state.settings, &headers, Role::Admin)?;
    match state
        .ledger
        .close_now()
        .await
        .map_err(ApiError::unavailable)?
    {
        Some((closed, opened)) => Ok(Json(
            json!({"closed": period_json(&closed), "opened": period_json(&opened)}),
        )),
        None => Err(ApiError::Unavailable(anyhow::anyhow!(
            "the open period started in the future (clock skew)"
        ))),
    }
}

pub async fn settle(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state.settings, &headers, Role::Admin)?;
    let user = UserId::parse(&user_id).map_err(ApiError::Unprocessable)?;
    let statement = state
        .ledger
        .settle(user.as_str())
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(json!({"statement": period_json(&statement)})))
}

//! Finance reads of the ledger and admin closes and settles:
//! `GET /v1/ledger/periods`, `GET /v1/ledger/periods/{id}.csv`,
//! `GET /v1/ledger/periods/{id}/items.csv`, `POST /v1/ledger/close`,
//! `POST /v1/users/{user_id}/settle`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::stream;
use crate::clock::rfc3339;
use crate::domain::UserId;
use crate::error::ApiError;
use crate::ledger::csv;
use crate::state::AppState;
use crate::store::Period;

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

#[utoipa::path(get, path = "/v1/ledger/periods", tag = "ledger", security(("finance" = []), ("admin" = [])),
    responses((status = 200, description = "Periods and statements, oldest first", body = crate::api::openapi::PeriodsDoc), (status = 401, description = "No or a wrong token", body = crate::api::openapi::ErrorDoc), (status = 403, description = "A token of another role", body = crate::api::openapi::ErrorDoc), (status = 503, description = "The store cannot answer now (Retry-After)", body = crate::api::openapi::ErrorDoc)))]
pub async fn periods(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
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

/// A period's ledger CSV streamed from the store (frozen prices when closed).
pub fn ledger_body(state: &AppState, period: Period) -> Body {
    let (store, settings) = (state.store.clone(), state.settings.clone());
    stream::body(move |chunks| async move {
        let pricing = csv::Pricing::of(&period, &settings.billing);
        let mut w = match csv::LedgerWriter::new(chunks.writer(), &period, pricing) {
            Ok(w) => w,
            Err(e) => return chunks.fail(e).await,
        };
        chunks
            .write_all(store.usage_rows(&period.id), |r| {
                w.row(&r)?;
                Ok(w.flush()?)
            })
            .await;
    })
}

/// `GET /v1/ledger/periods/{id}.csv`: a closed period's report, byte for byte
/// the file in `reports/`; the open period as it stands.
#[utoipa::path(get, path = "/v1/ledger/periods/{file}", tag = "ledger",
    params(("file" = String, Path, description = "<period_id>.csv")), security(("finance" = []), ("admin" = [])),
    responses((status = 200, description = "The period's ledger CSV; a closed one byte for byte as its report (ETag: its SHA-256)", content_type = "text/csv", body = String), (status = 401, description = "No or a wrong token", body = crate::api::openapi::ErrorDoc), (status = 403, description = "A token of another role", body = crate::api::openapi::ErrorDoc), (status = 404, description = "No such resource", body = crate::api::openapi::ErrorDoc), (status = 503, description = "The store cannot answer now (Retry-After)", body = crate::api::openapi::ErrorDoc)))]
pub async fn period_csv(
    State(state): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let id = file.strip_suffix(".csv").ok_or_else(|| {
        ApiError::NotFound(format!(
            "no such resource {file:?}; periods are at /v1/ledger/periods/<id>.csv"
        ))
    })?;
    let period = find(&state, id).await?;
    let filename = format!("notimeter-{}.csv", period.id);
    let sha = period.report_sha256.clone();
    let report = if period.end_at.is_some() {
        state.ledger.intact_report(&period).await
    } else {
        None
    };
    let body = match report {
        Some(path) => {
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| ApiError::Internal(e.into()))?;
            Body::from_stream(tokio_util::io::ReaderStream::new(file))
        }
        // A missing or altered report: the store still has the closed rows.
        None => ledger_body(&state, period),
    };
    Ok(csv_response(filename, body, sha))
}

/// `GET /v1/ledger/periods/{id}/items.csv`: every message of the period, streamed.
#[utoipa::path(get, path = "/v1/ledger/periods/{id}/items.csv", tag = "ledger",
    params(("id" = String, Path, description = "A period or statement id")), security(("finance" = []), ("admin" = [])),
    responses((status = 200, description = "One row per message of the period, streamed", content_type = "text/csv", body = String), (status = 401, description = "No or a wrong token", body = crate::api::openapi::ErrorDoc), (status = 403, description = "A token of another role", body = crate::api::openapi::ErrorDoc), (status = 404, description = "No such resource", body = crate::api::openapi::ErrorDoc), (status = 503, description = "The store cannot answer now (Retry-After)", body = crate::api::openapi::ErrorDoc)))]
pub async fn items_csv(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let period = find(&state, &id).await?;
    let store = state.store.clone();
    let period_id = period.id.clone();
    let body = stream::body(move |chunks| async move {
        let mut w = match csv::items_writer(chunks.writer()) {
            Ok(w) => w,
            Err(e) => return chunks.fail(e).await,
        };
        chunks
            .write_all(store.items(&period_id), |i| {
                csv::write_item(&mut w, &period_id, &i)?;
                Ok(w.flush()?)
            })
            .await;
    });
    Ok(csv_response(
        format!("notimeter-{}-items.csv", period.id),
        body,
        None,
    ))
}

#[utoipa::path(post, path = "/v1/ledger/close", tag = "ledger", security(("admin" = [])),
    responses((status = 200, description = "The period closed and the one opened", body = crate::api::openapi::CloseDoc), (status = 401, description = "No or a wrong token", body = crate::api::openapi::ErrorDoc), (status = 403, description = "A token of another role", body = crate::api::openapi::ErrorDoc), (status = 503, description = "The store cannot take it now (Retry-After)", body = crate::api::openapi::ErrorDoc)))]
pub async fn close(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
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

#[utoipa::path(post, path = "/v1/users/{user_id}/settle", tag = "ledger", params(("user_id" = String, Path, description = "1 to 128 letters, digits, _ - . @")), security(("admin" = [])),
    responses((status = 200, description = "The user's statement, closed; their count restarts from zero", body = crate::api::openapi::SettleDoc), (status = 401, description = "No or a wrong token", body = crate::api::openapi::ErrorDoc), (status = 403, description = "A token of another role", body = crate::api::openapi::ErrorDoc), (status = 422, description = "Invalid ids or body", body = crate::api::openapi::ErrorDoc), (status = 503, description = "The store cannot take it now (Retry-After)", body = crate::api::openapi::ErrorDoc)))]
pub async fn settle(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user = UserId::parse(&user_id).map_err(ApiError::Unprocessable)?;
    let statement = state
        .ledger
        .settle(user.as_str())
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(json!({"statement": period_json(&statement)})))
}

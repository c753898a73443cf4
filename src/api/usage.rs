//! Finance reads of the open period: `GET /v1/usage` and `GET /v1/ledger/current.csv`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::ledger::csv::Pricing;
use crate::ledger::money::round_total;
use crate::state::AppState;

#[utoipa::path(get, path = "/v1/usage", tag = "ledger", security(("finance" = []), ("admin" = [])),
    responses((status = 200, description = "The open period's counts, prices and amounts", body = crate::api::openapi::UsageDoc), (status = 401, description = "No or a wrong token", body = crate::api::openapi::ErrorDoc), (status = 403, description = "A token of another role", body = crate::api::openapi::ErrorDoc), (status = 503, description = "The store cannot answer now (Retry-After)", body = crate::api::openapi::ErrorDoc)))]
pub async fn usage(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let period = state.store.open_period().await?;
    let rows = state.store.usage(&period.id).await?;
    let pricing = Pricing::of(&period, &state.settings.billing);
    let mut total = rust_decimal::Decimal::ZERO;
    let usage: Vec<Value> = rows
        .iter()
        .map(|r| {
            let (unit, amount) = pricing.price(r);
            total += amount;
            json!({
                "user_id": r.user_id, "integration": r.integration,
                "delivered": r.delivered, "failed": r.failed,
                "segments": r.delivered_segments + r.failed_segments,
                "units": pricing.units(r),
                "unit_price": unit.to_string(), "amount": amount.to_string(),
            })
        })
        .collect();
    Ok(Json(json!({
        "period_id": period.id,
        "period_start": rfc3339(period.start_at),
        "currency": pricing.currency(),
        "total": round_total(total, pricing.currency()).to_string(),
        "usage": usage,
    })))
}

#[utoipa::path(get, path = "/v1/ledger/current.csv", tag = "ledger", security(("finance" = []), ("admin" = [])),
    responses((status = 200, description = "The open period so far, as the ledger CSV", content_type = "text/csv", body = String), (status = 401, description = "No or a wrong token", body = crate::api::openapi::ErrorDoc), (status = 403, description = "A token of another role", body = crate::api::openapi::ErrorDoc), (status = 503, description = "The store cannot answer now (Retry-After)", body = crate::api::openapi::ErrorDoc)))]
pub async fn current_csv(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let period = state.store.open_period().await?;
    let filename = format!(
        "attachment; filename=\"notimeter-{}-current.csv\"",
        period.id
    );
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, filename),
        ],
        super::ledger::ledger_body(&state, period),
    ))
}

//! `GET /` (the finance page), `GET|POST /login`, `GET /logout`. Signing in
//! checks the finance (or admin) token and keeps it in an HttpOnly,
//! SameSite=Strict cookie, which only read requests accept.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::{authorize_read, check, Role, COOKIE};
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::ledger::csv::Pricing;
use crate::ledger::page;

pub async fn index(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if authorize_read(&state.settings, &headers, Role::Finance).is_err() {
        return Ok(Redirect::to("/login").into_response());
    }
    let open = state.store.open_period().await?;
    let rows = state.store.usage(&open.id).await?;
    let periods = state.store.list_periods().await?;
    let today = now_ms();
    let daily = state.store.daily_counts(today - 30 * 86_400_000).await?;
    let html = page::index(&page::PageData {
        open: &open,
        rows: &rows,
        pricing: Pricing::of(&open, &state.settings.billing),
        periods: &periods,
        daily: &daily,
        today,
    });
    Ok(Html(html).into_response())
}

pub async fn login_form() -> Html<String> {
    Html(page::login(None))
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

pub async fn login(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    if check(&state.settings, Some(&form.token), Role::Finance).is_err() {
        return (
            StatusCode::UNAUTHORIZED,
            Html(page::login(Some(
                "That token is not a finance or admin token.",
            ))),
        )
            .into_response();
    }
    let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", form.token);
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/".to_owned()),
        ],
    )
        .into_response()
}

pub async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/login".to_owned()),
        ],
    )
        .into_response()
}

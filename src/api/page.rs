//! `GET /` (the finance page), `GET|POST /login`, `GET /logout`. Signing in
//! checks the finance (or admin) token and starts a session: a random id in an
//! HttpOnly, SameSite=Strict cookie (`Secure` over https), kept server-side
//! as a hash with an expiry, granting finance reads only. Signing out deletes
//! it. Wrong tokens are throttled per client address.

use std::net::SocketAddr;
use std::sync::Once;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use crate::api::throttle::client_key;
use crate::auth::{
    authorize_read, check, new_session_id, role_name, session_cookie, session_hash, Role, COOKIE,
};
use crate::clock::duration_ms;
use crate::config::Settings;
use crate::error::ApiError;
use crate::ledger::csv::Pricing;
use crate::ledger::scheduler::next_boundary;
use crate::ledger::{bill, page};
use crate::state::AppState;
use crate::store::NewSession;

#[utoipa::path(get, path = "/", tag = "page",
    responses((status = 200, description = "The finance page (a session cookie or the finance token)", content_type = "text/html", body = String), (status = 303, description = "Not signed in: to /login")))]
pub async fn index(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    match authorize_read(
        &state.settings,
        &state.store,
        &state.clock,
        &headers,
        Role::Finance,
    )
    .await
    {
        Ok(()) => {}
        Err(ApiError::Unauthorized | ApiError::Forbidden) => {
            return Ok(Redirect::to("/login").into_response())
        }
        Err(e) => return Err(e),
    }
    let open = state.store.open_period().await?;
    let rows = state.store.usage(&open.id).await?;
    let (closed, closed_count) = closed_periods(&state).await?;
    let today = state.clock.now_ms();
    let daily = state.store.daily_counts(today - 30 * 86_400_000).await?;
    let reconciliation = if state.settings.reconcile.alertmanager_urls.is_empty() {
        None
    } else {
        Some(state.store.reconciliation().await?)
    };
    let billing = &state.settings.billing;
    let html = page::index(&page::PageData {
        tz: state.settings.page_timezone(),
        open: &open,
        next_close: next_boundary(&billing.schedule, &billing.timezone, open.start_at),
        rows: &rows,
        pricing: Pricing::of(&open, billing),
        closed: &closed,
        closed_count,
        daily: &daily,
        today,
        reconciliation: reconciliation.as_ref().map(Option::as_ref),
    });
    Ok(Html(html).into_response())
}

/// The most recent closed periods and statements with their bills (priced
/// as their reports are, at the frozen prices), and how many there are.
async fn closed_periods(state: &AppState) -> Result<(Vec<page::ClosedPeriod>, i64), ApiError> {
    let (recent, count) = state
        .store
        .recent_closed_periods(page::CLOSED_SHOWN)
        .await?;
    let mut closed = Vec::with_capacity(recent.len());
    for period in recent {
        let bill = bill::of_period(&state.store, &period, &state.settings.billing).await?;
        closed.push(page::ClosedPeriod { period, bill });
    }
    Ok((closed, count))
}

#[utoipa::path(get, path = "/login", tag = "page",
    responses((status = 200, description = "The sign-in form", content_type = "text/html", body = String)))]
pub async fn login_form() -> Html<String> {
    Html(page::login(None))
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// Whether the session cookie is marked `Secure`: as configured, else when
/// notimeter's public URL is https.
fn secure(settings: &Settings) -> bool {
    settings.page.cookie_secure.unwrap_or_else(|| {
        settings
            .render
            .public_url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    })
}

fn set_cookie(settings: &Settings, value: &str, max_age_secs: u64) -> String {
    let secure = if secure(settings) { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}")
}

/// The client's address, when the server passes it on (`ConnectInfo`).
fn client_addr(info: Option<Extension<ConnectInfo<SocketAddr>>>) -> Option<std::net::IpAddr> {
    static MISSING: Once = Once::new();
    match info {
        Some(Extension(ConnectInfo(addr))) => Some(addr.ip()),
        None => {
            MISSING.call_once(|| {
                tracing::warn!(
                    "the server passes no client address: /login throttles all clients together"
                )
            });
            None
        }
    }
}

#[utoipa::path(post, path = "/login", tag = "page",
    request_body(content = crate::api::openapi::LoginDoc, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Signed in: a session cookie, and to /"), (status = 200, description = "A wrong token: the form again", content_type = "text/html", body = String), (status = 429, description = "Too many wrong tokens", body = crate::api::openapi::ErrorDoc)))]
pub async fn login(
    State(state): State<AppState>,
    info: Option<Extension<ConnectInfo<SocketAddr>>>,
    Form(form): Form<LoginForm>,
) -> Result<Response, ApiError> {
    let addr = client_addr(info);
    let accepted = state
        .login_throttle
        .attempt(client_key(addr), || {
            check(&state.settings, Some(&form.token), Role::Finance).is_ok()
        })
        .map_err(|retry_after| {
            tracing::warn!(client = ?addr, retry_after, "too many wrong tokens on /login");
            ApiError::TooManyRequests { retry_after }
        })?;
    if !accepted {
        tracing::info!(client = ?addr, "finance page sign-in refused: wrong token");
        return Ok((
            StatusCode::UNAUTHORIZED,
            Html(page::login(Some(
                "That token is not a finance or admin token.",
            ))),
        )
            .into_response());
    }
    let now = state.clock.now_ms();
    let ttl = state.settings.page.session_ttl;
    let id = new_session_id();
    // Finance, even when the admin token signed in: a session never writes.
    state
        .store
        .create_session(&NewSession {
            id_hash: session_hash(&id),
            role: role_name(Role::Finance).to_owned(),
            created_at: now,
            expires_at: now.saturating_add(duration_ms(ttl)),
            client_addr: addr.map(|a| a.to_string()),
        })
        .await?;
    match state.store.prune_sessions(now).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(pruned = n, "expired sessions deleted"),
        Err(e) => {
            tracing::warn!(error = %crate::error::Causes(&e), "pruning expired sessions failed")
        }
    }
    tracing::info!(client = ?addr, "finance page sign-in");
    let cookie = set_cookie(&state.settings, &id, ttl.as_secs().max(1));
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (header::LOCATION, "/".to_owned()),
        ],
    )
        .into_response())
}

/// Deletes the session (so its cookie opens nothing anywhere, on any replica)
/// and clears the cookie.
#[utoipa::path(get, path = "/logout", tag = "page",
    responses((status = 303, description = "Signed out (the session revoked), and to /login")))]
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(id) = session_cookie(&headers) {
        if state.store.delete_session(&session_hash(id)).await? {
            tracing::info!("finance page sign-out");
        }
    }
    let cookie = set_cookie(&state.settings, "", 0);
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/login".to_owned()),
        ],
    )
        .into_response())
}

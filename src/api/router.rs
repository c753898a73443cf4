//! The routes, grouped by role. Each group is wrapped by its role's token
//! check (`access`), so a route added to a group cannot be left open.

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use tower_http::trace::TraceLayer;

use super::{access, channels, health, ledger as ledger_api, log, page, test_send, usage};
use crate::auth::Role;
use crate::error::ApiError;
use crate::server::{self, BodyTimedOut};
use crate::state::AppState;

/// The routes, grouped by role; each group's token is checked by a layer,
/// from the headers, before a handler reads the body.
pub fn router(state: AppState) -> Router {
    let settings = state.settings.clone();
    // The ingest limit takes a turn before the body is read; it sits inside
    // (is added before) the layer that authenticates the request.
    let limit = crate::ingest::IngestLimit::new(&state.settings);
    let ingest = Router::new()
        .route("/v1/alertmanager", post(crate::ingest::alertmanager))
        .layer(DefaultBodyLimit::max(settings.max_request_bytes))
        .route_layer(middleware::from_fn_with_state(limit, crate::ingest::limit));
    let ingest = access::require(
        ingest,
        settings.clone(),
        state.store.clone(),
        state.clock.clone(),
        Role::Ingest,
    )
    .route_layer(middleware::from_fn_with_state(
        state.clone(),
        count_webhook_requests,
    ));
    let admin = Router::new()
        .route(
            "/v1/users/{user_id}/channels/{channel_id}",
            put(channels::put)
                .get(channels::get)
                .delete(channels::delete),
        )
        .route("/v1/users/{user_id}/channels", get(channels::list))
        .route(
            "/v1/users/{user_id}/channels/{channel_id}/test",
            post(test_send::test),
        )
        .route("/v1/undeliverable", get(log::undeliverable))
        .route("/v1/messages/{message_id}/redeliver", post(log::redeliver))
        .route("/v1/ledger/close", post(ledger_api::close))
        .route("/v1/users/{user_id}/settle", post(ledger_api::settle));
    let finance = Router::new()
        .route("/v1/usage", get(usage::usage))
        .route("/v1/users/{user_id}/messages", get(log::user_messages))
        .route("/v1/ledger/current.csv", get(usage::current_csv))
        .route("/v1/ledger/periods", get(ledger_api::periods))
        .route("/v1/ledger/periods/{file}", get(ledger_api::period_csv))
        .route(
            "/v1/ledger/periods/{id}/items.csv",
            get(ledger_api::items_csv),
        );
    let metrics = Router::new().route("/metrics", get(health::metrics));
    // Open: health checks, and the finance page, which sends a visitor
    // without its cookie to /login instead of answering 401.
    let open = Router::new()
        .route("/", get(page::index))
        .route("/login", get(page::login_form).post(page::login))
        .route("/logout", get(page::logout))
        .route("/openapi.json", get(super::openapi::openapi_json))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    Router::new()
        .merge(ingest)
        .merge(access::require(
            admin,
            settings.clone(),
            state.store.clone(),
            state.clock.clone(),
            Role::Admin,
        ))
        .merge(access::require(
            finance,
            settings.clone(),
            state.store.clone(),
            state.clock.clone(),
            Role::Finance,
        ))
        .merge(access::require(
            metrics,
            settings.clone(),
            state.store.clone(),
            state.clock.clone(),
            Role::Metrics,
        ))
        .merge(open)
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(
            settings.body_read_timeout,
            server::body_deadline,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Every 4xx is JSON, unknown routes included.
async fn unknown_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route {}", uri.path()))
}

/// A route asked with a method it does not take: 405, with `Allow` (added by
/// the router) and a JSON body.
async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not take {method}", uri.path()))
}

/// Counts every answer to the webhook route by status code, refusals by the
/// token check and body timeouts included.
async fn count_webhook_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let timed_out = request.extensions().get::<BodyTimedOut>().cloned();
    let response = next.run(request).await;
    let status = match timed_out {
        Some(t) if t.is_set() => StatusCode::REQUEST_TIMEOUT,
        _ => response.status(),
    };
    state.metrics.webhook_request(status);
    response
}

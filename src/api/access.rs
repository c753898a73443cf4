//! Authentication by layer, one per route group: the token is checked from
//! the request's headers before the handler runs, so before a byte of the
//! body is read. A wrong token is refused at once however slowly its body
//! arrives, and a route added to a group cannot be left open by accident.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::auth::{authorize, authorize_read, Role};
use crate::clock::Clock;
use crate::config::Settings;
use crate::store::Store;

#[derive(Clone)]
struct Access {
    settings: Arc<Settings>,
    /// Where the finance page's sessions are looked up.
    store: Arc<Store>,
    role: Role,
    /// Whether reads (GET, HEAD) also accept the finance page's login cookie.
    login_cookie: bool,
    /// What a session's expiry is read against.
    clock: Clock,
}

/// Requires `role`'s bearer token (or the admin's) on every route of
/// `routes`. Finance reads also accept the finance page's login cookie (see
/// [`authorize_read`], the session's expiry read against `clock`); requests
/// that change anything never do.
pub fn require<S>(
    routes: Router<S>,
    settings: Arc<Settings>,
    store: Arc<Store>,
    clock: Clock,
    role: Role,
) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    routes.route_layer(from_fn_with_state(
        Access {
            settings,
            store,
            role,
            login_cookie: role == Role::Finance,
            clock,
        },
        check,
    ))
}

async fn check(State(access): State<Access>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    let allowed = if access.login_cookie && read {
        authorize_read(
            &access.settings,
            &access.store,
            &access.clock,
            headers,
            access.role,
        )
        .await
    } else {
        authorize(&access.settings, headers, access.role)
    };
    match allowed {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

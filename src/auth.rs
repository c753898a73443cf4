//! Bearer-token roles. The admin token may do everything; a role whose token is
//! unset is open. Tokens are compared in constant time.

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::config::{Secret, Settings};
use crate::error::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Ingest,
    Admin,
    Finance,
    Metrics,
}

fn token_of(settings: &Settings, role: Role) -> Option<&Secret> {
    match role {
        Role::Ingest => settings.ingest_token.as_ref(),
        Role::Admin => settings.admin_token.as_ref(),
        Role::Finance => settings.finance_token.as_ref(),
        Role::Metrics => settings.metrics_token.as_ref(),
    }
}

fn same(a: &str, b: &Secret) -> bool {
    a.as_bytes().ct_eq(b.expose().as_bytes()).into()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The cookie the finance page's login sets; accepted only by reads.
pub const COOKIE: &str = "notimeter_token";

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// Allows the request if the role is open or the bearer token is the role's or
/// the admin's. A token that belongs to another role gets 403, anything else 401.
pub fn authorize(settings: &Settings, headers: &HeaderMap, role: Role) -> Result<(), ApiError> {
    check(settings, bearer(headers), role)
}

/// Like [`authorize`], for reads: the login cookie of the finance page counts
/// too. (Never for requests that change anything, so a cookie cannot be used
/// to close or settle.)
pub fn authorize_read(
    settings: &Settings,
    headers: &HeaderMap,
    role: Role,
) -> Result<(), ApiError> {
    check(settings, bearer(headers).or_else(|| cookie(headers)), role)
}

/// Whether `token` may act as `role`.
pub fn check(settings: &Settings, given: Option<&str>, role: Role) -> Result<(), ApiError> {
    let Some(required) = token_of(settings, role) else {
        return Ok(());
    };
    let Some(given) = given else {
        return Err(ApiError::Unauthorized);
    };
    if same(given, required)
        || settings
            .admin_token
            .as_ref()
            .is_some_and(|t| same(given, t))
    {
        return Ok(());
    }
    let other_role = [Role::Ingest, Role::Finance, Role::Metrics]
        .into_iter()
        .filter_map(|r| token_of(settings, r))
        .any(|t| same(given, t));
    Err(if other_role {
        ApiError::Forbidden
    } else {
        ApiError::Unauthorized
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h
    }

    #[test]
    fn roles() {
        let s = Settings {
            ingest_token: Some(Secret::new("i")),
            admin_token: Some(Secret::new("a")),
            finance_token: Some(Secret::new("f")),
            ..Settings::default()
        };
        assert!(authorize(&s, &headers("i"), Role::Ingest).is_ok());
        assert!(authorize(&s, &headers("a"), Role::Ingest).is_ok());
        assert!(matches!(
            authorize(&s, &headers("f"), Role::Admin),
            Err(ApiError::Forbidden)
        ));
        assert!(matches!(
            authorize(&s, &headers("x"), Role::Admin),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            authorize(&s, &HeaderMap::new(), Role::Finance),
            Err(ApiError::Unauthorized)
        ));
        assert!(authorize(&s, &HeaderMap::new(), Role::Metrics).is_ok());
        let mut c = HeaderMap::new();
        c.insert("cookie", "theme=dark; notimeter_token=f".parse().unwrap());
        assert!(authorize_read(&s, &c, Role::Finance).is_ok());
        assert!(
            matches!(
                authorize(&s, &c, Role::Finance),
                Err(ApiError::Unauthorized)
            ),
            "no cookies for writes"
        );
    }
}

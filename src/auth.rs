//! Bearer-token roles. The admin token may do everything; a role whose token is
//! unset is open. Tokens are compared in constant time. Reads also accept the
//! finance page's session cookie (see [`authorize_read`]).

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::clock::Clock;
use crate::config::{Secret, Settings};
use crate::error::ApiError;
use crate::store::Store;

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

/// The cookie the finance page's sign-in sets: a random session id. The store
/// keeps only its SHA-256, with the role it grants (reads only) and an expiry.
pub const COOKIE: &str = "notimeter_session";

/// Length of a session id: 32 random bytes in unpadded base64url.
const SESSION_ID_LEN: usize = 43;

/// A new session id: 32 bytes from `rand`'s thread-local CSPRNG (ChaCha,
/// seeded and reseeded from the operating system), unpadded base64url.
pub fn new_session_id() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// What the store keeps of a session id: its SHA-256, hex.
pub fn session_hash(id: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(id.as_bytes()))
}

/// The session id in the request's cookie, if it has the shape of one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .find(|id| {
            id.len() == SESSION_ID_LEN
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The name a role has in the store's sessions.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Ingest => "ingest",
        Role::Admin => "admin",
        Role::Finance => "finance",
        Role::Metrics => "metrics",
    }
}

/// Allows the request if the role is open or the bearer token is the role's or
/// the admin's. A token that belongs to another role gets 403, anything else 401.
pub fn authorize(settings: &Settings, headers: &HeaderMap, role: Role) -> Result<(), ApiError> {
    check(settings, bearer(headers), role)
}

/// Like [`authorize`], for reads: without a bearer token, a finance page
/// session (its cookie, looked up in the store, unexpired by `clock` and of
/// this role) counts too. Never use it for requests that change anything: a
/// session grants reads only, so a cookie can never close or settle, even
/// when the admin token was used to sign in.
pub async fn authorize_read(
    settings: &Settings,
    store: &Store,
    clock: &Clock,
    headers: &HeaderMap,
    role: Role,
) -> Result<(), ApiError> {
    let given = bearer(headers);
    if given.is_some() || token_of(settings, role).is_none() {
        return check(settings, given, role);
    }
    let Some(id) = session_cookie(headers) else {
        return Err(ApiError::Unauthorized);
    };
    match store
        .session_role(&session_hash(id), clock.now_ms())
        .await?
    {
        Some(granted) if granted == role_name(role) => Ok(()),
        Some(_) => Err(ApiError::Forbidden),
        None => Err(ApiError::Unauthorized),
    }
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
        c.insert(
            "cookie",
            format!("theme=dark; {COOKIE}={}", new_session_id())
                .parse()
                .unwrap(),
        );
        assert!(
            matches!(
                authorize(&s, &c, Role::Finance),
                Err(ApiError::Unauthorized)
            ),
            "no cookies for writes"
        );
    }

    #[test]
    fn session_ids() {
        let a = new_session_id();
        assert_eq!(a.len(), SESSION_ID_LEN);
        assert_ne!(a, new_session_id());
        assert_eq!(session_hash(&a).len(), 64);
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            format!("{COOKIE}=short; {COOKIE}={a}").parse().unwrap(),
        );
        assert_eq!(session_cookie(&h), Some(a.as_str()));
        h.insert("cookie", "notimeter_token=finance".parse().unwrap());
        assert_eq!(session_cookie(&h), None);
    }
}

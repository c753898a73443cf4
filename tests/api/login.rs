//! Signing in to the finance page: the cookie holds a random session id kept
//! server-side (never a token), expires, is revoked on sign-out on every
//! replica, is `Secure` over https, and grants reads only. Wrong tokens are
//! throttled per client address.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER, SET_COOKIE};
use reqwest::{Client, StatusCode};
use serde_json::Value;
use sha2::Digest;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    login_sets_a_session_cookie_not_the_token,
    cookie_is_secure_when_public_url_is_https,
    session_never_writes_even_after_an_admin_sign_in,
    logout_revokes_the_session,
    expired_session_is_refused,
    wrong_logins_are_throttled_per_address,
    raw_token_cookie_is_refused,
    replicas_share_sessions_and_revocations,
);

fn no_redirects() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in with `token`; returns the whole `Set-Cookie` and its `name=value` pair.
pub async fn sign_in(app: &TestApp, token: &str) -> (String, String) {
    let r = no_redirects()
        .post(app.url("/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "sign-in");
    let cookie = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let pair = cookie.split(';').next().unwrap().trim().to_owned();
    (cookie, pair)
}

async fn get_with_cookie(app: &TestApp, path: &str, pair: &str) -> reqwest::Response {
    no_redirects()
        .get(app.url(path))
        .header("cookie", pair)
        .send()
        .await
        .unwrap()
}

async fn post(app: &TestApp, path: &str, headers: HeaderMap) -> StatusCode {
    no_redirects()
        .post(app.url(path))
        .headers(headers)
        .send()
        .await
        .unwrap()
        .status()
}

/// Posts the finance token to `/login` from `client` (and its address).
async fn post_finance_token(client: &Client, app: &TestApp) -> reqwest::Response {
    client
        .post(app.url("/login"))
        .form(&[("token", FINANCE_TOKEN)])
        .send()
        .await
        .unwrap()
}

fn cookie_header(pair: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("cookie", pair.parse().unwrap());
    h
}

fn attributes(cookie: &str) -> Vec<String> {
    cookie
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect()
}

/// The finance reads a signed-in browser makes: each must answer `expected`.
async fn assert_reads(app: &TestApp, pair: &str, expected: StatusCode) {
    for path in ["/v1/ledger/current.csv", "/v1/ledger/periods", "/v1/usage"] {
        let r = get_with_cookie(app, path, pair).await;
        assert_eq!(r.status(), expected, "{path} with {pair}");
    }
}

async fn login_sets_a_session_cookie_not_the_token(backend: Backend) {
    let app = spawn_app(&backend).await;
    for token in [FINANCE_TOKEN, ADMIN_TOKEN] {
        let (cookie, pair) = sign_in(&app, token).await;
        let (name, id) = pair.split_once('=').unwrap();
        assert_eq!(name, "notimeter_session");
        assert!(!cookie.contains(token), "the token is not in {cookie}");
        assert!(
            id.len() >= 43
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "a random id: {id}"
        );
        let attrs = attributes(&cookie);
        for want in ["httponly", "samesite=strict", "path=/", "max-age=43200"] {
            assert!(attrs.iter().any(|a| a == want), "{want} in {cookie}");
        }
        assert!(
            !attrs.iter().any(|a| a == "secure"),
            "plain http public_url: {cookie}"
        );
        // The store keeps a hash of the id, granting finance reads, whoever signed in.
        let hash = hex::encode(sha2::Sha256::digest(id.as_bytes()));
        let role: String = query_one(
            &app.database_url,
            &format!("SELECT role FROM sessions WHERE id_hash = '{hash}'"),
        )
        .await;
        assert_eq!(role, "finance");
        assert_reads(&app, &pair, StatusCode::OK).await;
        let page = get_with_cookie(&app, "/", &pair).await;
        assert_eq!(page.status(), StatusCode::OK);
    }
    let ids: i64 = query_one(&app.database_url, "SELECT COUNT(*) FROM sessions").await;
    assert_eq!(ids, 2, "one session per sign-in");
    app.stop().await;
}

async fn cookie_is_secure_when_public_url_is_https(backend: Backend) {
    let app = spawn_app_with(&backend, |s| {
        s.render.public_url = "https://notimeter.example.com".into();
    })
    .await;
    let (cookie, _) = sign_in(&app, FINANCE_TOKEN).await;
    assert!(
        attributes(&cookie).iter().any(|a| a == "secure"),
        "{cookie}"
    );
    app.stop().await;
}

async fn session_never_writes_even_after_an_admin_sign_in(backend: Backend) {
    let app = spawn_app(&backend).await;
    let sink = Sink::start().await;
    app.add_webhook("u1", "hook", &sink.url("/u1")).await;
    let (_, pair) = sign_in(&app, ADMIN_TOKEN).await;
    assert_reads(&app, &pair, StatusCode::OK).await;
    let id = pair.split_once('=').unwrap().1.to_owned();
    for path in ["/v1/ledger/close", "/v1/users/u1/settle"] {
        assert_eq!(
            post(&app, path, cookie_header(&pair)).await,
            StatusCode::UNAUTHORIZED,
            "{path} with the session cookie"
        );
        // Nor is the cookie's value a credential of its own.
        let mut bearer = HeaderMap::new();
        bearer.insert("authorization", format!("Bearer {id}").parse().unwrap());
        assert_eq!(
            post(&app, path, bearer).await,
            StatusCode::UNAUTHORIZED,
            "{path} with the cookie's value as a bearer token"
        );
    }
    let channels = get_with_cookie(&app, "/v1/users/u1/channels", &pair).await;
    assert_eq!(channels.status(), StatusCode::UNAUTHORIZED, "admin reads");
    let periods = app.get_json("/v1/ledger/periods", FINANCE_TOKEN).await;
    assert_eq!(
        periods["periods"].as_array().unwrap().len(),
        1,
        "nothing closed or settled: {periods}"
    );
    app.stop().await;
}

async fn logout_revokes_the_session(backend: Backend) {
    let app = spawn_app(&backend).await;
    let (_, pair) = sign_in(&app, FINANCE_TOKEN).await;
    let (_, other) = sign_in(&app, FINANCE_TOKEN).await;
    assert_reads(&app, &pair, StatusCode::OK).await;
    let out = get_with_cookie(&app, "/logout", &pair).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    // A copy of the cookie kept after signing out opens nothing.
    assert_reads(&app, &pair, StatusCode::UNAUTHORIZED).await;
    let page = get_with_cookie(&app, "/", &pair).await;
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.headers()["location"], "/login");
    // And the browser is told to forget it.
    let cleared = out.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        cleared.starts_with("notimeter_session=;")
            && attributes(&cleared).iter().any(|a| a == "max-age=0"),
        "{cleared}"
    );
    // Other sessions stay.
    assert_reads(&app, &other, StatusCode::OK).await;
    app.stop().await;
}

async fn expired_session_is_refused(backend: Backend) {
    let app = spawn_app_with(&backend, |s| {
        s.page.session_ttl = Duration::from_secs(1);
    })
    .await;
    let (cookie, pair) = sign_in(&app, FINANCE_TOKEN).await;
    assert_reads(&app, &pair, StatusCode::OK).await;
    app.clock.advance(Duration::from_millis(1500));
    assert_reads(&app, &pair, StatusCode::UNAUTHORIZED).await;
    assert!(
        attributes(&cookie).iter().any(|a| a == "max-age=1"),
        "the browser forgets it too: {cookie}"
    );
    // The next sign-in deletes expired sessions.
    sign_in(&app, FINANCE_TOKEN).await;
    let left: i64 = query_one(&app.database_url, "SELECT COUNT(*) FROM sessions").await;
    assert_eq!(left, 1);
    app.stop().await;
}

async fn wrong_logins_are_throttled_per_address(backend: Backend) {
    let app = spawn_app(&backend).await;
    let client = no_redirects();
    let mut statuses = Vec::new();
    for i in 0..50 {
        let r = client
            .post(app.url("/login"))
            .form(&[("token", format!("guess-{i}"))])
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            let wait: u64 = r.headers()[RETRY_AFTER].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&wait), "Retry-After: {wait}");
            let body: Value = r.json().await.unwrap();
            assert!(
                body["error"].as_str().unwrap().contains("try again"),
                "{body}"
            );
        }
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // Throttled before the token is looked at: the right one waits too.
    let r = post_finance_token(&client, &app).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another client address is not held back.
    let elsewhere = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = post_finance_token(&elsewhere, &app).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "127.0.0.2 signs in");
    // Once the failures have left the window, the first address may try again.
    app.clock.advance(app.settings.page.login_window);
    let r = post_finance_token(&client, &app).await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "signs in after the window"
    );
    app.stop().await;
}

async fn raw_token_cookie_is_refused(backend: Backend) {
    let app = spawn_app(&backend).await;
    for token in [FINANCE_TOKEN, ADMIN_TOKEN] {
        for name in ["notimeter_token", "notimeter_session"] {
            let pair = format!("{name}={token}");
            assert_reads(&app, &pair, StatusCode::UNAUTHORIZED).await;
            let page = get_with_cookie(&app, "/", &pair).await;
            assert_eq!(page.status(), StatusCode::SEE_OTHER, "{pair}");
        }
    }
    app.stop().await;
}

async fn replicas_share_sessions_and_revocations(backend: Backend) {
    let a = spawn_app(&backend).await;
    let b = start(a.settings.clone(), a.dir.clone()).await;
    let (_, pair) = sign_in(&a, FINANCE_TOKEN).await;
    assert_reads(&b, &pair, StatusCode::OK).await;
    let out = get_with_cookie(&b, "/logout", &pair).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_reads(&a, &pair, StatusCode::UNAUTHORIZED).await;
    b.stop().await;
    a.stop().await;
}

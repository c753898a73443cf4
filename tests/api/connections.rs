//! Connections and request bodies: slow or silent clients are cut off by the
//! header, body and idle timeouts, the connection cap closes idle connections
//! so `/healthz` still answers, and every route checks the token from the
//! headers before it reads a byte of the body.
//!
//! These speak HTTP/1.1 over raw TCP, because a well-behaved client cannot
//! send half a request. Margins are generous (timeouts of 1 s, 5 s to see
//! their effect), so a loaded machine does not make them flaky.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::on_both_backends;

/// Long enough for a timeout of 1 s to have fired on a busy machine.
const MARGIN: Duration = Duration::from_secs(5);

on_both_backends!(
    slow_request_bodies_get_408,
    wrong_token_is_refused_before_the_body_is_read,
    every_protected_route_checks_its_token
);

async fn connect(app: &TestApp) -> (OwnedReadHalf, OwnedWriteHalf) {
    TcpStream::connect(app.addr).await.unwrap().into_split()
}

/// Whether the server closes the connection within `within` (end of file or a
/// reset; anything it sends before is read and dropped).
async fn closed_within(reader: &mut OwnedReadHalf, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Writes `bytes` one at a time, `every` apart, until the server closes or
/// `bytes` runs out: a client that sends a byte a second, only faster.
fn trickle(mut writer: OwnedWriteHalf, bytes: Vec<u8>, every: Duration) {
    tokio::spawn(async move {
        for b in bytes {
            if writer.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
}

/// One response: its status and body (read by Content-Length), or None when
/// the server did not answer completely within `within`.
async fn read_response(reader: &mut OwnedReadHalf, within: Duration) -> Option<(u16, String)> {
    tokio::time::timeout(within, async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]);
                    return Some((status, body.to_string()));
                }
            }
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .ok()
    .flatten()
}

fn assert_json_error(body: &str) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_heads_are_closed() {
    let app = spawn_app_with(&Backend::Sqlite, |s| {
        s.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    // Connects and sends nothing.
    let (mut silent, _keep) = connect(&app).await;
    // Sends a request head a byte at a time and never finishes it.
    let (mut slow, writer) = connect(&app).await;
    let head = b"GET /healthz HTTP/1.1\r\nHost: notimeter\r\nX-Padding: ".to_vec();
    let endless: Vec<u8> = head
        .into_iter()
        .chain(std::iter::repeat_n(b'a', 1000))
        .collect();
    trickle(writer, endless, Duration::from_millis(100));
    assert!(
        closed_within(&mut silent, MARGIN).await,
        "a connection that sent nothing is still open"
    );
    assert!(
        closed_within(&mut slow, MARGIN).await,
        "a connection sending its head a byte at a time is still open"
    );
    // The service itself is fine.
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed() {
    let app = spawn_app_with(&Backend::Sqlite, |s| {
        s.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let (mut reader, mut writer) = connect(&app).await;
    writer
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: notimeter\r\n\r\n")
        .await
        .unwrap();
    let (status, _) = read_response(&mut reader, MARGIN)
        .await
        .expect("an answer to /healthz");
    assert_eq!(status, 200);
    assert!(
        closed_within(&mut reader, MARGIN).await,
        "an idle kept-alive connection is still open"
    );
    app.stop().await;
}

/// A request whose body arrives a byte at a time gets 408 with the API's error
/// body once `body_read_timeout` has passed, on the admin and the ingest route.
async fn slow_request_bodies_get_408(backend: Backend) {
    let app = spawn_app_with(&backend, |s| {
        s.body_read_timeout = Duration::from_secs(1);
    })
    .await;
    for (method, path, token) in [
        ("PUT", "/v1/users/u1/channels/c1", ADMIN_TOKEN),
        ("POST", "/v1/alertmanager", INGEST_TOKEN),
    ] {
        let (mut reader, mut writer) = connect(&app).await;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: notimeter\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
        );
        writer.write_all(head.as_bytes()).await.unwrap();
        trickle(writer, vec![b' '; 999], Duration::from_millis(100));
        let (status, body) = read_response(&mut reader, MARGIN)
            .await
            .unwrap_or_else(|| panic!("{method} {path}: no answer to a body sent too slowly"));
        assert_eq!(status, 408, "{method} {path}: {body}");
        assert_json_error(&body);
    }
    assert_eq!(
        app.metric("notimeter_webhook_requests_total", &[("code", "408")])
            .await,
        1.0,
        "the webhook's 408 is counted as such"
    );
    // A body that arrives in time is unaffected.
    let r = app
        .put_channel(
            "u1",
            "c1",
            serde_json::json!({"type": "webhook", "settings": {"url": "http://127.0.0.1:9/x"}}),
        )
        .await;
    assert_eq!(r.status(), 201);
    app.stop().await;
}

/// A wrong token is answered from the headers: 401 at once, without waiting
/// for a large body sent slowly; a malformed body without a token is 401 too.
async fn wrong_token_is_refused_before_the_body_is_read(backend: Backend) {
    let app = spawn_app(&backend).await;
    for (method, path, token, expect) in [
        ("POST", "/v1/alertmanager", "wrong", 401),
        ("PUT", "/v1/users/u1/channels/c1", "wrong", 401),
        ("PUT", "/v1/users/u1/channels/c1", FINANCE_TOKEN, 403),
        ("POST", "/v1/alertmanager", FINANCE_TOKEN, 403),
    ] {
        let (mut reader, mut writer) = connect(&app).await;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: notimeter\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{{\"alerts\""
        );
        writer.write_all(head.as_bytes()).await.unwrap();
        trickle(writer, vec![b' '; 1000], Duration::from_millis(100));
        let started = Instant::now();
        let (status, body) = read_response(&mut reader, MARGIN)
            .await
            .unwrap_or_else(|| panic!("{method} {path}: no answer before the body was sent"));
        assert_eq!(status, expect, "{method} {path} with {token:?}: {body}");
        assert_json_error(&body);
        assert!(started.elapsed() < MARGIN);
    }
    let r = app
        .http
        .put(app.url("/v1/users/u1/channels/c1"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a malformed body without a token");
    let r = app
        .http
        .post(app.url("/v1/alertmanager"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a malformed webhook without a token");
    // Refusals by the token check are counted like the webhook's other answers.
    for (code, n) in [("401", 2.0), ("403", 1.0)] {
        assert_eq!(
            app.metric("notimeter_webhook_requests_total", &[("code", code)])
                .await,
            n,
            "{code}"
        );
    }
    app.stop().await;
}

/// Every route of a role refuses a request without its token; the finance
/// page's login cookie opens finance reads and nothing else.
async fn every_protected_route_checks_its_token(backend: Backend) {
    let app = spawn_app_with(&backend, |s| {
        s.metrics_token = Some(notimeter::config::Secret::new("metrics-token"));
    })
    .await;
    let routes = [
        ("POST", "/v1/alertmanager"),
        ("PUT", "/v1/users/u1/channels/c1"),
        ("GET", "/v1/users/u1/channels/c1"),
        ("DELETE", "/v1/users/u1/channels/c1"),
        ("GET", "/v1/users/u1/channels"),
        ("GET", "/v1/usage"),
        ("GET", "/v1/ledger/current.csv"),
        ("GET", "/v1/ledger/periods"),
        ("GET", "/v1/ledger/periods/x.csv"),
        ("GET", "/v1/ledger/periods/x/items.csv"),
        ("POST", "/v1/ledger/close"),
        ("POST", "/v1/users/u1/settle"),
        ("GET", "/metrics"),
    ];
    for (method, path) in routes {
        let r = app
            .http
            .request(method.parse().unwrap(), app.url(path))
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} without a token");
        assert_json_error(&r.text().await.unwrap());
    }
    let (_, cookie) = crate::login::sign_in(&app, FINANCE_TOKEN).await;
    for (method, path, expect) in [
        ("GET", "/v1/usage", 200),
        ("GET", "/v1/ledger/periods", 200),
        ("GET", "/v1/ledger/current.csv", 200),
        ("POST", "/v1/ledger/close", 401),
        ("POST", "/v1/users/u1/settle", 401),
        ("GET", "/v1/users/u1/channels", 401),
    ] {
        let r = app
            .http
            .request(method.parse().unwrap(), app.url(path))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expect, "{method} {path} with the login cookie");
    }
    for path in ["/healthz", "/readyz", "/login"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} is open");
    }
    app.stop().await;
}

/// With the cap reached by idle connections, a new one closes the connection
/// idle the longest, so at most `max_connections` stay open and `/healthz`
/// still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_when_the_connection_cap_is_reached() {
    let cap = 4;
    let app = spawn_app_with(&Backend::Sqlite, |s| {
        s.max_connections = cap;
        // Long enough that only the cap can close these connections.
        s.header_read_timeout = Duration::from_secs(120);
        s.idle_timeout = Duration::from_secs(120);
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..2 * cap {
        idle.push(connect(&app).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = tokio::time::timeout(MARGIN, app.http.get(app.url("/healthz")).send())
        .await
        .expect("/healthz answers while the cap is reached")
        .unwrap();
    assert_eq!(r.status(), 200);
    // 2 × cap idle connections and the health check: all but cap - 1 of the
    // idle ones have been closed.
    let closed = futures::future::join_all(
        idle.iter_mut()
            .map(|(reader, _)| closed_within(reader, MARGIN)),
    )
    .await
    .into_iter()
    .filter(|c| *c)
    .count();
    assert!(
        closed > cap,
        "{closed} of {} idle connections closed with a cap of {cap}",
        2 * cap
    );
    app.stop().await;
}

/// Shutdown closes idle connections at once instead of waiting for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_idle_connections() {
    let app = spawn_app_with(&Backend::Sqlite, |s| {
        s.shutdown_timeout = Duration::from_secs(60);
    })
    .await;
    let (_r1, _w1) = connect(&app).await;
    let (mut r2, mut w2) = connect(&app).await;
    w2.write_all(b"GET /healthz HTTP/1.1\r\nHost: notimeter\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut r2, MARGIN).await.unwrap().0, 200);
    tokio::time::timeout(Duration::from_secs(20), app.stop())
        .await
        .expect("shutdown with idle connections open");
}
